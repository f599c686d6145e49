"""The Ray ingress's routing (gptoss/ray_serve.py Router and keys) and the CLI's errors; no Ray
cluster is needed here (tests/test_ray_serve.py runs one)."""
import random
import subprocess
import sys

import pytest

from gptoss import chat as harmony
from gptoss import ray_serve
from gptoss.cli import main
from gptoss.tokenizer import get_tokenizer


def test_import_gptoss_does_not_import_ray():
    code = "import sys, gptoss, gptoss.cli, gptoss.server; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_power_of_two_choices_prefers_the_less_loaded():
    r = ray_serve.Router(2, rng=random.Random(0))
    r.in_flight = [5, 1]
    assert {r.pick() for _ in range(50)} == {1}
    r.in_flight = [0, 9]
    assert {r.pick() for _ in range(50)} == {0}
    # with many replicas, never the most loaded of all (it loses any pair it is drawn in)
    r = ray_serve.Router(4, rng=random.Random(1))
    r.in_flight = [3, 3, 9, 3]
    picks = [r.pick() for _ in range(200)]
    assert 2 not in picks and set(picks) == {0, 1, 3}


def test_affinity_holds_until_the_replica_is_down():
    r = ray_serve.Router(3, rng=random.Random(2))
    r.remember("k", 2)
    r.in_flight = [0, 0, 50]          # affinity wins over load: the cache is there
    assert r.pick(["k"]) == 2
    assert r.pick(["unknown", "k"]) == 2
    r.mark_down(2)
    assert r.pick(["k"]) in (0, 1)
    assert r.pick(["k"], exclude=[0]) == 1
    r.mark_up(2)
    assert r.pick(["k"]) == 2
    r.mark_down(0), r.mark_down(1), r.mark_down(2)
    assert r.pick(exclude=[0, 1]) == 2    # all down: still try one not yet tried


def test_key_table_is_bounded_lru():
    r = ray_serve.Router(2, max_keys=3)
    for i, k in enumerate("abcd"):
        r.remember(k, i % 2)
    assert list(r.keys) == ["b", "c", "d"]
    r.pick(["b"])
    r.remember("e", 0)
    assert list(r.keys) == ["d", "b", "e"]


def test_chat_key_is_stable_across_turns_and_differs_between_conversations():
    system = {"role": "system", "content": "Be brief. " * 200}
    turn1 = [system, {"role": "user", "content": "first question"}]
    turn2 = turn1 + [{"role": "assistant", "content": "an answer"},
                     {"role": "user", "content": "second question"}]
    k1 = ray_serve.chat_key({"messages": turn1})
    assert k1 is not None and k1 == ray_serve.chat_key({"messages": turn2})
    # conversations whose first page is the same (a long shared system prompt) share a replica,
    # the one whose cache holds that page
    assert len(harmony.render(turn1)) > ray_serve.PAGE_TOKENS
    assert k1 == ray_serve.chat_key({"messages": [system, {"role": "user", "content": "other"}]})
    short = [{"role": "user", "content": "a"}]
    assert ray_serve.chat_key({"messages": short}) != ray_serve.chat_key(
        {"messages": [{"role": "user", "content": "b"}]})
    # the key covers the first page of the prompt the replica renders, no more
    full = harmony.render(turn2)
    lead = harmony.render(turn1)[:-2]
    assert full[:ray_serve.PAGE_TOKENS] == lead[:ray_serve.PAGE_TOKENS]
    assert ray_serve.chat_key({"messages": "bad"}) is None
    assert ray_serve.chat_key({"messages": [{"role": "nobody"}]}) is None


def test_completion_and_responses_keys():
    enc = get_tokenizer()
    long = "word " * 400
    assert len(enc.encode(long)) > ray_serve.PAGE_TOKENS
    k = ray_serve.completion_key({"prompt": long})
    assert k == ray_serve.completion_key({"prompt": long + " more text appended"})
    assert k != ray_serve.completion_key({"prompt": "other " + long})
    assert ray_serve.completion_key({"prompt": 3}) is None
    ks = ray_serve.responses_keys({"previous_response_id": "resp_1", "input": "hi"})
    assert ks[0] == "resp:resp_1" and len(ks) == 2
    assert ray_serve.routing_keys("/v1/models", {}) == []
    assert ray_serve.routing_keys("/v1/responses/resp_9", None) == ["resp:resp_9"]
    assert ray_serve.routing_keys("/v1/responses/resp_9/input_items", None) == ["resp:resp_9"]
    assert ray_serve.routing_keys("/v1/responses", {"input": "x", "prompt_cache_key": "u1"}
                                  )[0] == "pck:u1"
    assert ray_serve._response_id(b'event: response.created\ndata: {"type": "response.created",'
                                  b' "response": {"id": "resp_abc"}}\n\n') == "resp_abc"
    assert ray_serve._response_id(b'{"id": "resp_x", "object": "response"}') == "resp_x"
    assert ray_serve._response_id(b'{"id": "chatcmpl-1"}') is None


def test_stream_error_events_parse_as_their_stream_format():
    import json
    ev = ray_serve.stream_error_event("/v1/chat/completions", "gone").decode()
    assert ev.startswith("data: ") and ev.endswith("\n\n")
    assert json.loads(ev[6:])["error"]["code"] == "replica_failed"
    ev = ray_serve.stream_error_event("/v1/responses", "gone").decode()
    assert ev.startswith("event: error\ndata: ")
    assert json.loads(ev.split("data: ", 1)[1])["type"] == "error"


def test_cli_ray_flags(monkeypatch, capsys):
    assert main(["serve", "-m", "random:tiny", "--replicas", "2"]) == 2
    assert "--replicas needs --ray" in capsys.readouterr().err
    assert main(["serve", "-m", "random:tiny", "--ray", "--replicas", "0"]) == 2
    assert "--replicas 0" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)     # as if Ray were not installed
    assert main(["serve", "-m", "random:tiny", "--ray", "--replicas", "2"]) == 2
    assert "pip install 'gptoss[ray]'" in capsys.readouterr().err


def test_app_builder_validates_its_arguments():
    pytest.importorskip("ray")
    with pytest.raises(ValueError, match="'model' is required"):
        ray_serve.app_builder({})
    with pytest.raises(ValueError, match="unknown argument.*replica\\b"):
        ray_serve.app_builder({"model": "random:tiny", "replica": 2})
    with pytest.raises(ValueError, match="'replicas' must be int"):
        ray_serve.app_builder({"model": "random:tiny", "replicas": "two"})
    with pytest.raises(ValueError, match="replicas=0"):
        ray_serve.app_builder({"model": "random:tiny", "replicas": 0})
    with pytest.raises(ValueError, match="backend='tpu'"):
        ray_serve.app_builder({"model": "random:tiny", "backend": "tpu"})
    with pytest.raises(ValueError, match="max_batch=0"):
        ray_serve.app_builder({"model": "random:tiny", "max_batch": "0"})
    app = ray_serve.app_builder({"model": "random:tiny", "replicas": "3", "max_batch": "8"})
    assert type(app).__name__ == "Application"


def test_metrics_of_replicas_merge_with_a_replica_label():
    a = ("# HELP gptoss_requests_total Requests.\n# TYPE gptoss_requests_total counter\n"
         'gptoss_requests_total{endpoint="chat"} 3\ngptoss_up 1\n')
    b = ("# HELP gptoss_requests_total Requests.\n# TYPE gptoss_requests_total counter\n"
         'gptoss_requests_total{endpoint="chat"} 5\ngptoss_up 1\n')
    got = ray_serve.merge_metrics([("r0", a), ("r1", b)]).splitlines()
    assert got.count("# TYPE gptoss_requests_total counter") == 1
    assert 'gptoss_requests_total{replica="r0",endpoint="chat"} 3' in got
    assert 'gptoss_requests_total{replica="r1",endpoint="chat"} 5' in got
    assert 'gptoss_up{replica="r1"} 1' in got and len(got) == 6
    assert ray_serve.merge_metrics([("r0", "x{} 1\n")]) == 'x{replica="r0"} 1\n'
