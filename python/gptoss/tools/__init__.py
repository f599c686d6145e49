"""The built-in tools gpt-oss was trained with: `python` and `browser`."""
from .python_tool import PythonTool, SandboxError

__all__ = ["PythonTool", "SandboxError"]
