"""gptoss: fast, offline inference for OpenAI's gpt-oss-20b and gpt-oss-120b.

    import gptoss
    model = gptoss.Model.from_pretrained("path/to/gpt-oss-20b")   # or "random:tiny"
    for tok in model.generate("Hello", max_new_tokens=20, temperature=0):
        print(tok.text, end="")

`gptoss.backends()` lists the engines this installation can run and why the others cannot.
"""
from .backends import BackendInfo, backends
from .checkpoint import CheckpointError, Weights
from .config import Config, ConfigError
from .model import GeneratedToken, Generation, Model
from .safetensors_io import SafetensorsError
from .sampling import Sampler
from .tokenizer import get_tokenizer

__version__ = "0.1.0"

__all__ = ["Model", "Config", "ConfigError", "Weights", "CheckpointError", "SafetensorsError",
           "Sampler", "Generation", "GeneratedToken", "backends", "BackendInfo", "get_tokenizer",
           "__version__"]
