"""The built-in tools gpt-oss was trained with: `python` (a sandboxed, stateful session) and
`browser` (search, open and find over a local corpus), and `BuiltinTools`, which runs the calls
the model addresses to them (for `Model.chat` and for servers)."""
from .browser import Browser, BrowserError, Citation, CorpusBackend, Document, SearchHit
from .builtin import BuiltinTools, ToolRun
from .python_tool import PythonTool, SandboxError, sandbox_problem

__all__ = ["PythonTool", "SandboxError", "Browser", "BrowserError", "CorpusBackend", "Document",
           "SearchHit", "Citation", "BuiltinTools", "ToolRun", "sandbox_problem"]
