"""`Model`: the one object a user touches. Loads a checkpoint, picks a backend, generates."""
from __future__ import annotations

import codecs
import dataclasses
from typing import Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np

from .backends import make_engine
from .checkpoint import Weights
from .sampling import Sampler
from .testing import resolve_model_path
from .tokenizer import ENDOFTEXT, RETURN, get_tokenizer

DEFAULT_STOP_TOKENS = (ENDOFTEXT, RETURN)


@dataclasses.dataclass
class GeneratedToken:
    id: int
    text: str           # the text this token completes (may be "" mid UTF-8 sequence)
    logprob: Optional[dict] = None   # when a steering.Steer asked for log-probabilities


class Generation:
    """A stream of `GeneratedToken`s. After it is exhausted: `tokens`, `text`, `stop_reason`.

    stop_reason: "stop_token" (then `stop_token` holds which), "max_new_tokens" or
    "context_limit". cached_tokens: prompt positions the engine took from its prefix cache.
    """

    def __init__(self, it: Iterator[GeneratedToken], prompt_tokens: List[int]):
        self._it = it
        self.prompt_tokens = prompt_tokens
        self.tokens: List[int] = []
        self.text = ""
        self.stop_reason: Optional[str] = None
        self.stop_token: Optional[int] = None
        self.cached_tokens = 0

    def __iter__(self):
        return self

    def __next__(self) -> GeneratedToken:
        tok = next(self._it)
        self.tokens.append(tok.id)
        self.text += tok.text
        return tok

    def run(self) -> "Generation":
        """Consume the stream and return self."""
        for _ in self:
            pass
        return self

    def close(self) -> None:
        """Stop early (what was generated so far stays in `tokens` and `text`)."""
        close = getattr(self._it, "close", None)
        if close:
            close()


class Model:
    def __init__(self, weights: Weights, engine, backend_note: str):
        self.weights = weights
        self.config = weights.config
        self.engine = engine
        self.backend = engine.name
        self.backend_note = backend_note
        self.tokenizer = get_tokenizer()

    @classmethod
    def from_pretrained(cls, path: str, backend: str = "auto", layout: Optional[str] = None,
                        max_context: Optional[int] = None, progress: bool = False,
                        threads: Optional[int] = None,
                        activation_levels: Optional[int] = None,
                        prefix_cache_gb: Optional[float] = None,
                        repack: Optional[str] = None,
                        cache_dir: Optional[str] = None,
                        batch_invariant: Optional[bool] = None,
                        kv_dtype: Optional[str] = None,
                        dense_weights: Optional[str] = None) -> "Model":
        """Open a checkpoint directory (either layout), `random:PRESET`, or a Hugging Face
        repository id (`openai/gpt-oss-20b`, optionally `@revision`) already in the local Hugging
        Face cache (gptoss.hub: $HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub; never
        downloaded).

        backend: "auto" (fastest available), "cuda", "cpu" or "numpy".
        threads: CPU threads for the C++ engine (default: all cores).
        activation_levels: 2 (default, float32-class accuracy) or 1 (int8 activations for the
        MXFP4 experts, and at the avx512bf16 level bf16 activations for the dense products:
        faster prefill, ~0.5% error per product) for the C++ CPU engine.
        prefix_cache_gb: the C++ engines' prefix cache (default 2 GB of idle cached KV pages; 0
        turns it off): a prompt that starts like an earlier one reuses its KV pages.
        repack: the C++ CPU engine's MXFP4 experts at every SIMD level (AVX2, AVX-512, AMX), whose
        kernels want another layout: "auto" (default) repacks them once into a cache file and
        maps it like the checkpoint (later loads are as fast, the pages stay reclaimable);
        "memory" repacks into memory; "off" keeps the checkpoint's layout (slower kernels).
        cache_dir: where repacked weights are cached (default $GPTOSS_CACHE, else
        $XDG_CACHE_HOME/gptoss, else ~/.cache/gptoss).
        batch_invariant: a sequence's logits are bit-identical however its prompt was split,
        cached or batched (off by default). CUDA: the per-row kernels for any number of rows
        (slower prefill). CPU: already so at every SIMD level but amx, where by default an
        expert's 8 tokens or more take the AMX-BF16 tiles and fewer the exact integer code
        (float32-class either way); True keeps the integer code for all (slower prefill there).
        The numpy backend refuses True.
        kv_dtype: how the KV cache holds keys and values: "auto" (default: float32 on the CPU and
        in numpy, bf16 on CUDA), "bf16" (half the memory and the bytes a long-context step reads;
        K and V rounded to bf16 after RoPE, attention itself in float32) or "float32" (not CUDA).
        dense_weights: "bf16" (default: the checkpoint's dense matrices as they are) or "int8":
        QKV, the output projections, the routers and the unembedding quantized once at load to
        int8 per row and 32-block with a float32 scale (an error up to 1/254 of each block's
        largest weight), cached like the repacked experts. An accuracy trade: a CPU decode step
        reads 1.3 GB of dense weights instead of 2.4 GB (20b). The C++ CPU engine runs it and the
        numpy engine computes the same quantized weights (its reference); CUDA refuses it.
        """
        if dense_weights is not None and dense_weights not in ("bf16", "int8"):
            raise ValueError(f"dense_weights={dense_weights!r}: must be 'bf16' or 'int8'")
        if kv_dtype is not None and kv_dtype not in ("auto", "float32", "bf16"):
            raise ValueError(f"kv_dtype={kv_dtype!r}: must be 'auto', 'float32' or 'bf16'")
        if repack is not None and repack not in ("auto", "memory", "off"):
            raise ValueError(f"repack={repack!r}: must be 'auto', 'memory' or 'off'")
        if prefix_cache_gb is not None and not (prefix_cache_gb >= 0):
            raise ValueError(f"prefix_cache_gb={prefix_cache_gb!r}: must be >= 0 (0: off)")
        weights = Weights(resolve_model_path(path, progress=progress), layout=layout)
        engine, note = make_engine(weights, backend, max_context=max_context, threads=threads,
                                   activation_levels=activation_levels,
                                   prefix_cache_gb=prefix_cache_gb, repack=repack,
                                   cache_dir=cache_dir, batch_invariant=batch_invariant,
                                   kv_dtype=kv_dtype, dense_weights=dense_weights)
        wn = getattr(engine, "weights_note", "")
        return cls(weights, engine, note + (f"; {wn}" if wn else ""))

    @property
    def max_context(self) -> int:
        return self.engine.max_context

    # ------------------------------------------------------------------------- forward
    def _as_tokens(self, prompt: Union[str, Sequence[int]]) -> List[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, allowed_special="all")
        toks = [int(t) for t in prompt]
        V = self.config.vocab_size
        for t in toks:
            if not 0 <= t < V:
                raise ValueError(f"token id {t} is out of range [0, {V})")
        return toks

    def _request(self, prompt, max_new_tokens, what: str = "prompt") -> List[int]:
        """Validate one generation request; its prompt as token ids."""
        toks = self._as_tokens(prompt)
        if not toks:
            raise ValueError(f"{what} is empty")
        if not (isinstance(max_new_tokens, int) and max_new_tokens >= 0):
            raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be an integer >= 0")
        if len(toks) >= self.max_context:
            raise ValueError(f"{what} of {len(toks)} tokens leaves no room in the context of "
                             f"{self.max_context} tokens")
        return toks

    def forward(self, tokens: Union[str, Sequence[int]]) -> np.ndarray:
        """Logits [len(tokens), vocab] float32 of a fresh sequence (the cache is reset)."""
        toks = self._as_tokens(tokens)
        if not toks:
            raise ValueError("tokens is empty")
        self.engine.reset()
        out = self.engine.prefill(toks, all_logits=True)
        self.engine.reset()
        return np.asarray(out, dtype=np.float32)

    # ------------------------------------------------------------------------- generate
    def generate(self, prompt: Union[str, Sequence[int]], max_new_tokens: int = 256,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 seed: Optional[int] = None,
                 stop_tokens: Optional[Iterable[int]] = None,
                 forced_tokens: Optional[Sequence[int]] = None, steer=None) -> Generation:
        """Stream tokens after `prompt` (text, special tokens allowed, or token ids).

        Greedy at temperature 0; reproducible for a given seed. Stops at any of `stop_tokens`
        (default <|endoftext|> and <|return|>; the stop token is not yielded), after
        `max_new_tokens`, or at the context limit. `forced_tokens`, if given, replace the first
        sampled tokens (the model still runs on them): constrained prefixes such as a required
        tool call, and the test hook that drives a random model down a chosen path.
        `steer` (a steering.Steer) constrains tokens and/or reports their log-probabilities.
        """
        toks = self._request(prompt, max_new_tokens)
        sampler = Sampler(temperature, top_p, top_k, seed)
        stops = set(DEFAULT_STOP_TOKENS if stop_tokens is None else (int(t) for t in stop_tokens))
        forced = self._as_tokens(list(forced_tokens)) if forced_tokens else []
        gen = Generation(iter(()), toks)
        gen._it = self._stream(toks, max_new_tokens, sampler, stops, gen, forced, steer)
        return gen

    def _stream(self, toks, max_new_tokens, sampler, stops, gen,
                forced=(), steer=None) -> Iterator[GeneratedToken]:
        eng = self.engine
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        eng.reset()
        if max_new_tokens == 0:
            gen.stop_reason = "max_new_tokens"
            return
        logits = eng.prefill(toks, all_logits=False)
        if hasattr(eng, "cached_tokens"):
            gen.cached_tokens = eng.cached_tokens()
        # native engines sample on their device: only the token id crosses (decode_sample)
        on_device = hasattr(eng, "decode_sample")
        nxt = None
        for i in range(max_new_tokens):
            if i < len(forced):
                nxt = forced[i]
            elif logits is not None:
                nxt = steer.choose(logits, sampler, eng.position) if steer else \
                    sampler(logits, counter=eng.position)
            lp = steer.observe(nxt, logits) if steer else None
            if nxt in stops:
                gen.stop_reason, gen.stop_token = "stop_token", nxt
                return
            text = dec.decode(self.tokenizer.decode_single_token_bytes(nxt))
            yield GeneratedToken(nxt, text, lp)
            if i + 1 == max_new_tokens:
                break
            if eng.position >= self.max_context:
                gen.stop_reason = "context_limit"
                return
            if on_device and i + 1 >= len(forced) and not (steer and steer.wants_logits()):
                logits, nxt = None, eng.decode_sample(nxt, sampler)
            else:
                logits = eng.decode(nxt)
        gen.stop_reason = "max_new_tokens"
        tail = dec.decode(b"", final=True)
        if tail:
            gen.text += tail


    def generate_batch(self, prompts: Sequence[Union[str, Sequence[int]]],
                       max_new_tokens: int = 256, temperature: float = 1.0, top_p: float = 1.0,
                       top_k: int = 0, seed: Optional[int] = None,
                       stop_tokens: Optional[Iterable[int]] = None) -> List[Generation]:
        """Generate for several prompts together; returns one finished `Generation` each.

        On the C++ engine the prompts decode as one batch (each step reads the weights once for
        all of them); elsewhere they run one after another. Sequence k samples with seed + k.
        """
        prompts = list(prompts)
        if not prompts:
            return []
        toks = [self._request(p, max_new_tokens, f"prompts[{k}]") for k, p in enumerate(prompts)]
        if not hasattr(self.engine, "decode_batch"):
            return [self.generate(t, max_new_tokens, temperature, top_p, top_k,
                                  None if seed is None else seed + k, stop_tokens).run()
                    for k, t in enumerate(toks)]
        stops = set(DEFAULT_STOP_TOKENS if stop_tokens is None else (int(t) for t in stop_tokens))
        eng = self.engine
        gens = [Generation(iter(()), t) for t in toks]
        samplers = [Sampler(temperature, top_p, top_k, None if seed is None else seed + k)
                    for k in range(len(toks))]
        decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in toks]
        seqs = [0] + [eng.add_sequence() for _ in toks[1:]]
        try:
            eng.reset()
            logits = [eng.prefill_sequence(s, t) for s, t in zip(seqs, toks)]
            # the first token from the prefill's logits; then each step samples on the device
            nxt_of = [samplers[k](logits[k], counter=len(toks[k])) for k in range(len(toks))]
            active = list(range(len(toks))) if max_new_tokens > 0 else []
            for g in gens:
                g.stop_reason = "max_new_tokens"
            while active:
                feed = []
                for k in active:
                    g, nxt = gens[k], nxt_of[k]
                    if nxt in stops:
                        g.stop_reason, g.stop_token = "stop_token", nxt
                        continue
                    g.tokens.append(nxt)
                    g.text += decoders[k].decode(self.tokenizer.decode_single_token_bytes(nxt))
                    if len(g.tokens) == max_new_tokens:
                        continue
                    if eng.sequence_position(seqs[k]) >= self.max_context:
                        g.stop_reason = "context_limit"
                        continue
                    feed.append((k, nxt))
                active = [k for k, _ in feed]
                if active:
                    ids = eng.decode_batch_sample([seqs[k] for k in active],
                                                  [t for _, t in feed],
                                                  [samplers[k] for k in active])
                    for row, k in enumerate(active):
                        nxt_of[k] = int(ids[row])
        finally:
            for s in seqs[1:]:
                eng.remove_sequence(s)
        for g, d in zip(gens, decoders):
            g.text += d.decode(b"", final=True)
        return gens

    # ------------------------------------------------------------------------- chat
    def chat(self, messages, tools=None, reasoning_effort: str = "medium",
             max_tokens: int = 1024, temperature: float = 1.0, top_p: float = 1.0,
             top_k: int = 0, seed: Optional[int] = None, stream: bool = True,
             current_date: Optional[str] = None, stop: Optional[Sequence[str]] = None,
             tool_choice=None, forced_tokens: Optional[Sequence[int]] = None,
             builtin_tools=None, python_tool=None, browser=None, max_tool_calls: int = 8,
             response_format=None, logprobs: Optional[int] = None):
        """Chat in the Harmony format with OpenAI-style `messages` and `tools`.

        stream=True: an iterator of events (`chat_events.ReasoningDelta`, `TextDelta`,
        `ToolCall`, and a final `Done` with stop reason and usage). stream=False: a `ChatResult`.

        Built-in tools (gptoss.tools): `builtin_tools` names them ("python", "browser") or is a
        `gptoss.tools.BuiltinTools`; `python_tool` (a `PythonTool`) and `browser` (a `Browser`
        or a corpus folder) give the instances (a default sandboxed PythonTool is made for
        "python" if none is given, and closed at the end). The model's calls to them run, their
        results join the conversation and generation goes on, up to `max_tool_calls` calls;
        events `tools.loop.BuiltinToolCall` / `BuiltinToolResult` show each, and `Done.messages`
        (`ChatResult.messages`) holds what the turn added to the conversation.
        response_format: OpenAI's {"type": "json_schema", "json_schema": {"schema": ...}} or
        {"type": "json_object"}: the final answer follows it (reasoning stays free; needs the
        `structured` extra); tools with "strict": true get arguments that follow their schema.
        logprobs: report log-probabilities of the answer's tokens with this many alternatives
        (on each TextDelta's `logprobs`).
        """
        from . import chat_events
        if builtin_tools is not None or python_tool is not None or browser is not None:
            for name, v in (("response_format", response_format), ("logprobs", logprobs)):
                if v is not None:
                    raise ValueError(f"{name} is not supported together with built-in tools "
                                     "(builtin_tools / python_tool / browser)")
            from .tools.loop import run_chat_with_tools
            bt, own = _builtin_tools(builtin_tools, python_tool, browser)
            it = run_chat_with_tools(self, messages, bt, tools=tools,
                                     reasoning_effort=reasoning_effort, max_tokens=max_tokens,
                                     temperature=temperature, top_p=top_p, top_k=top_k,
                                     seed=seed, current_date=current_date, stop=stop,
                                     tool_choice=tool_choice, forced_tokens=forced_tokens,
                                     max_tool_calls=max_tool_calls)
            if own:
                it = _closing(it, bt)
            return it if stream else chat_events.collect(it)
        it = chat_events.run_chat(self, messages, tools=tools, reasoning_effort=reasoning_effort,
                                  max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                  top_k=top_k, seed=seed, current_date=current_date, stop=stop,
                                  tool_choice=tool_choice, forced_tokens=forced_tokens,
                                  response_format=response_format, logprobs=logprobs)
        return it if stream else chat_events.collect(it)


def _builtin_tools(builtin_tools, python_tool, browser):
    """Model.chat's tool arguments as one BuiltinTools; whether the chat owns (closes) it."""
    from .tools import Browser, BuiltinTools, PythonTool
    if isinstance(builtin_tools, BuiltinTools):
        if python_tool is not None or browser is not None:
            raise ValueError("builtin_tools: a BuiltinTools already holds its tools; do not also "
                             "pass python_tool= or browser=")
        return builtin_tools, False
    if isinstance(builtin_tools, str):
        builtin_tools = (builtin_tools,)
    names = set(builtin_tools or ())
    if not names:
        names = {n for n, v in (("python", python_tool), ("browser", browser)) if v is not None}
    bad = names - {"python", "browser"}
    if bad:
        raise ValueError(f"builtin_tools: unknown tool(s) {sorted(bad)}; the built-in tools are "
                         "'python' and 'browser'")
    if python_tool is not None and not isinstance(python_tool, PythonTool):
        raise ValueError("python_tool: must be a gptoss.tools.PythonTool")
    if "python" not in names and python_tool is not None:
        raise ValueError("python_tool is given but builtin_tools does not name 'python'")
    if "browser" in names and browser is None:
        raise ValueError("builtin_tools names 'browser': pass browser= (a gptoss.tools.Browser "
                         "or a corpus folder)")
    if "browser" not in names and browser is not None:
        raise ValueError("browser is given but builtin_tools does not name 'browser'")
    own_python = "python" in names and python_tool is None
    bt = BuiltinTools(python=python_tool if python_tool is not None else ("python" in names),
                      browser=browser if "browser" in names else None)
    return bt, own_python


def _closing(it, bt):
    try:
        yield from it
    finally:
        bt.close()
