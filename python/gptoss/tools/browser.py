"""The `browser` tool, offline: search, open and find over a local corpus.

`Browser` keeps the conventions gpt-oss was trained on: every result the model sees is a page
with a cursor (`[3]`), numbered lines (`L0: ...`), and link ids (`【12†title】`) that `open` follows;
the model cites `【cursor†L9-L11】`, which `Browser.resolve_citation` maps back to a file and a line
span. Pages come from a backend: `search(query, topn)` and `fetch(id_or_url)`. The backend that
ships, `CorpusBackend`, indexes a folder of text, Markdown and HTML files into SQLite FTS5 (BM25
ranking) kept beside the corpus and refreshed when files change. Nothing reaches the network.
"""
from __future__ import annotations

import dataclasses
import html
import html.parser
import os
import re
import sqlite3
import textwrap
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..chat import BROWSER_DESCRIPTION

EXTENSIONS = (".txt", ".md", ".markdown", ".html", ".htm")
INDEX_NAME = ".gptoss-index.sqlite3"
WRAP = 160
DEFAULT_LINES = 40


@dataclasses.dataclass
class Document:
    url: str                          # the path relative to the corpus, '/'-separated
    title: str
    lines: List[str]                  # the text as shown, link markers `【k†label】` included
    links: List[Tuple[str, int]]      # link k -> (url, loc); loc -1: the top
    path: Optional[str] = None        # the file on disk
    file_lines: Optional[List[int]] = None   # 1-based file line of each shown line


@dataclasses.dataclass
class SearchHit:
    url: str
    title: str
    snippet: str


@dataclasses.dataclass
class Citation:
    cursor: int
    url: str
    title: str
    path: Optional[str]
    start_line: int                   # 1-based lines of the file (inclusive)
    end_line: int
    text: str                         # the cited lines as shown to the model


class BrowserError(Exception):
    """A call the model made that cannot be served; its text is shown to the model."""


# ------------------------------------------------------------------------------ text extraction
class _HTMLText(html.parser.HTMLParser):
    BLOCK = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header",
             "footer", "pre", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "dd", "dt"}
    SKIP = {"script", "style", "head", "noscript", "template"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.lines: List[Tuple[int, str]] = []   # (file line, text)
        self.cur: List[str] = []
        self.cur_line = 1
        self.skip = 0
        self.title = ""
        self.in_title = False
        self.links: List[str] = []
        self.href: Optional[str] = None
        self.anchor: List[str] = []
        self.pre = 0

    def _break(self):
        text = "".join(self.cur)
        if not self.pre:
            text = " ".join(text.split())
        if text.strip():
            self.lines.append((self.cur_line, text))
        self.cur = []

    def handle_starttag(self, tag, attrs):
        if tag == "title":
            self.in_title = True
        if tag in self.SKIP:
            self.skip += 1
            return
        if tag in self.BLOCK:
            self._break()
            if tag == "pre":
                self.pre += 1
            if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
                self.cur.append("#" * int(tag[1]) + " ")
            if tag == "li":
                self.cur.append("* ")
        if tag == "a":
            self.href = dict(attrs).get("href")
            self.anchor = []

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if tag == "a" and self.href is not None:
            label = " ".join("".join(self.anchor).split())
            self.cur.append(("\x00" + self.href + "\x01") + label + "\x02")
            self.href = None
            return
        if tag in self.BLOCK:
            self._break()
            if tag == "pre":
                self.pre = max(0, self.pre - 1)

    def handle_data(self, data):
        if self.in_title:
            self.title += data
        if self.skip:
            return
        if self.href is not None:
            self.anchor.append(data)
            return
        if not "".join(self.cur).strip():
            self.cur_line = self.getpos()[0] + (len(data) - len(data.lstrip("\n"))
                                                 if not self.cur else 0)
        if self.pre:
            parts = data.split("\n")
            for k, part in enumerate(parts):
                if k:
                    self._break()
                    self.cur_line = self.getpos()[0] + k
                self.cur.append(part)
        else:
            self.cur.append(data)


_MD_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _resolve(base_url: str, target: str) -> Optional[Tuple[str, int]]:
    """A link target as (corpus url, loc), or None if it leaves the corpus."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
        return None
    target, _, _frag = target.partition("#")
    if not target:
        return (base_url, -1)
    if target.startswith("/"):
        url = target.lstrip("/")
    else:
        url = os.path.normpath(os.path.join(os.path.dirname(base_url), target)).replace(os.sep, "/")
    if url.startswith("../") or url == "..":
        return None
    return (url, -1)


def _with_links(text: str, base_url: str, links: List[Tuple[str, int]],
                is_html: bool) -> str:
    def mark(label: str, target: str) -> str:
        dest = _resolve(base_url, target)
        if dest is None:
            return f"{label} ({target})"
        links.append(dest)
        return f"【{len(links) - 1}†{label}】"
    if is_html:
        return re.sub("\x00([^\x01]*)\x01([^\x02]*)\x02",
                      lambda m: mark(m.group(2), html.unescape(m.group(1))), text)
    return _MD_LINK.sub(lambda m: mark(m.group(1), m.group(2)), text)


def _wrap(pairs: Sequence[Tuple[int, str]]) -> Tuple[List[str], List[int]]:
    lines, src = [], []
    for ln, text in pairs:
        pieces = textwrap.wrap(text, WRAP, break_long_words=True, replace_whitespace=False,
                               drop_whitespace=True) if len(text) > WRAP else [text]
        for p in pieces or [""]:
            lines.append(p)
            src.append(ln)
    return lines, src


def extract(path: str, url: str) -> Document:
    """A file of the corpus as a Document (title, shown lines, links, file line of each line)."""
    with open(path, "rb") as f:
        raw = f.read().decode("utf-8", "replace")
    links: List[Tuple[str, int]] = []
    if path.lower().endswith((".html", ".htm")):
        p = _HTMLText()
        p.feed(raw)
        p.close()
        p._break()
        pairs = [(ln, _with_links(t, url, links, True)) for ln, t in p.lines]
        title = " ".join(p.title.split()) or os.path.basename(path)
    else:
        pairs = [(i + 1, _with_links(t.rstrip(), url, links, False))
                 for i, t in enumerate(raw.split("\n"))]
        while pairs and not pairs[-1][1]:
            pairs.pop()
        title = next((t.lstrip("#").strip() for _, t in pairs if t.startswith("# ")), "") \
            or os.path.basename(path)
    lines, src = _wrap(pairs)
    return Document(url, title, lines, links, path, src)


def _plain(line: str) -> str:
    return re.sub(r"【\d+†([^】]*)】", r"\1", line)


# ------------------------------------------------------------------------------ the corpus
class CorpusBackend:
    """A folder of .txt, .md and .html files, indexed with SQLite FTS5 (BM25 ranking).

    The index is kept in `DIR/.gptoss-index.sqlite3` (or `index_path`) and brought up to date
    (files added, changed, removed) before searches, at most every `refresh_every` seconds.
    """

    def __init__(self, corpus: str, index_path: Optional[str] = None,
                 refresh_every: float = 1.0):
        if not isinstance(corpus, (str, os.PathLike)) or not os.path.isdir(corpus):
            raise ValueError(f"corpus={corpus!r}: must be an existing directory")
        self.root = os.path.realpath(corpus)
        self.index_path = index_path or os.path.join(self.root, INDEX_NAME)
        self.refresh_every = refresh_every
        try:
            self.db = sqlite3.connect(self.index_path, check_same_thread=False)
            self.db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS docs USING "
                            "fts5(url UNINDEXED, title, body, tokenize='porter unicode61')")
        except sqlite3.OperationalError as e:
            raise RuntimeError(f"cannot create the search index {self.index_path}: {e} (SQLite "
                               "with FTS5 is needed; pass index_path= for a writable place)")
        self.db.execute("CREATE TABLE IF NOT EXISTS files (url TEXT PRIMARY KEY, "
                        "mtime_ns INTEGER, size INTEGER, docid INTEGER)")
        self._last = 0.0
        self.refresh(force=True)

    def _walk(self) -> Dict[str, str]:
        out = {}
        for d, dirs, files in os.walk(self.root):
            dirs[:] = sorted(x for x in dirs if not x.startswith("."))
            for name in sorted(files):
                if name.lower().endswith(EXTENSIONS) and not name.startswith("."):
                    full = os.path.join(d, name)
                    out[os.path.relpath(full, self.root).replace(os.sep, "/")] = full
        return out

    def refresh(self, force: bool = False) -> int:
        """Bring the index up to date; how many files were (re)indexed or dropped."""
        now = time.monotonic()
        if not force and now - self._last < self.refresh_every:
            return 0
        self._last = now
        known = {u: (m, s, i) for u, m, s, i in self.db.execute("SELECT * FROM files")}
        files = self._walk()
        changed = 0
        with self.db:
            for url, (m, s, docid) in known.items():
                if url not in files:
                    self.db.execute("DELETE FROM docs WHERE rowid = ?", (docid,))
                    self.db.execute("DELETE FROM files WHERE url = ?", (url,))
                    changed += 1
            for url, full in files.items():
                st = os.stat(full)
                old = known.get(url)
                if old and old[0] == st.st_mtime_ns and old[1] == st.st_size:
                    continue
                if old:
                    self.db.execute("DELETE FROM docs WHERE rowid = ?", (old[2],))
                doc = extract(full, url)
                cur = self.db.execute("INSERT INTO docs (url, title, body) VALUES (?, ?, ?)",
                                      (url, doc.title, "\n".join(_plain(x) for x in doc.lines)))
                self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                                (url, st.st_mtime_ns, st.st_size, cur.lastrowid))
                changed += 1
        return changed

    def search(self, query: str, topn: int = 10) -> List[SearchHit]:
        self.refresh()
        words = re.findall(r"\w+", query)
        if not words:
            return []
        match = " OR ".join('"' + w.replace('"', "") + '"' for w in words)
        rows = self.db.execute(
            "SELECT url, title, snippet(docs, 2, '', '', ' … ', 24) FROM docs WHERE docs MATCH ? "
            "ORDER BY bm25(docs, 0.0, 5.0, 1.0) LIMIT ?", (match, int(topn))).fetchall()
        return [SearchHit(u, t, " ".join(s.split())) for u, t, s in rows]

    def fetch_source(self, id_or_url: str) -> Document:
        """The file as it is on disk, line for line (for `open(view_source=True)`)."""
        doc = self.fetch(id_or_url)
        with open(doc.path, "rb") as f:
            raw = f.read().decode("utf-8", "replace").split("\n")
        while raw and not raw[-1]:
            raw.pop()
        lines, src = _wrap([(i + 1, t.rstrip()) for i, t in enumerate(raw)])
        return Document(doc.url, doc.title + " (source)", lines, [], doc.path, src)

    def fetch(self, id_or_url: str) -> Document:
        url = str(id_or_url).strip()
        if url.startswith("file://"):
            url = url[len("file://"):]
        full = os.path.realpath(url if os.path.isabs(url) else os.path.join(self.root, url))
        if not (full == self.root or full.startswith(self.root + os.sep)) \
                or not os.path.isfile(full) or not full.lower().endswith(EXTENSIONS):
            raise BrowserError(f"{id_or_url!r} is not a page of the local corpus")
        return extract(full, os.path.relpath(full, self.root).replace(os.sep, "/"))


# ------------------------------------------------------------------------------ the browser
@dataclasses.dataclass
class _Page:
    doc: Document
    cursor: int


class Browser:
    """The model's browser over a backend (`Browser(corpus="docs/")` for a local folder).

    `search`, `open` and `find` take the arguments the model's calls carry and return the text
    the model is shown; bad ids, cursors or arguments come back as an error text, never raised.
    """

    name = "browser"
    description = BROWSER_DESCRIPTION

    def __init__(self, corpus: Optional[str] = None, backend: Any = None,
                 view_lines: int = DEFAULT_LINES, index_path: Optional[str] = None):
        if (corpus is None) == (backend is None):
            raise ValueError("Browser: give exactly one of corpus= (a folder) or backend=")
        self.backend = backend if backend is not None else CorpusBackend(corpus, index_path)
        self.view_lines = int(view_lines)
        self.pages: List[_Page] = []

    def reset(self) -> None:
        """Forget the pages of the conversation (cursors start again at 0)."""
        self.pages = []

    # ------------------------------------------------------------------ views
    def _add(self, doc: Document) -> _Page:
        page = _Page(doc, len(self.pages))
        self.pages.append(page)
        return page

    def _view(self, page: _Page, loc: int = -1, num_lines: int = -1) -> str:
        n = len(page.doc.lines)
        start = 0 if loc is None or loc < 0 else loc
        if n and start >= n:
            raise BrowserError(f"loc {loc} is past the end of page [{page.cursor}] "
                               f"({n} lines, L0-L{n - 1})")
        count = self.view_lines if num_lines is None or num_lines <= 0 else num_lines
        end = min(n, start + count)
        head = f"[{page.cursor}] {page.doc.title}"
        if page.doc.url:
            head += f" ({page.doc.url})"
        head += f"\n**viewing lines [{start} - {max(start, end - 1)}] of {max(n - 1, 0)}**\n\n"
        return head + "\n".join(f"L{i}: {page.doc.lines[i]}" for i in range(start, end))

    def _page(self, cursor: int) -> _Page:
        if not self.pages:
            raise BrowserError("no page is open yet: search or open one first")
        if cursor is None or cursor == -1:
            return self.pages[-1]
        if not isinstance(cursor, int) or not 0 <= cursor < len(self.pages):
            raise BrowserError(f"cursor {cursor!r} names no page; open pages are "
                               f"[0] to [{len(self.pages) - 1}]")
        return self.pages[cursor]

    # ------------------------------------------------------------------ calls
    def search(self, query: str, topn: int = 10, source: Optional[str] = None) -> str:
        if not isinstance(query, str) or not query.strip():
            raise BrowserError("search needs a non-empty `query` string")
        if not isinstance(topn, (int, float)) or topn < 1:
            raise BrowserError(f"topn {topn!r}: must be a positive number")
        hits = self.backend.search(query, int(topn))
        lines, links = [], []
        for h in hits:
            links.append((h.url, -1))
            lines.append(f"* 【{len(links) - 1}†{h.title}†{h.url}】")
            lines.append(f"  {h.snippet}" if h.snippet else "")
        if not hits:
            lines = [f"No results for {query!r}."]
        doc = Document(url="", title=f"Search results for `{query}`", lines=lines, links=links)
        return self._view(self._add(doc), 0, max(len(lines), 1))

    def open(self, id: Union[int, str] = -1, cursor: int = -1, loc: int = -1,
             num_lines: int = -1, view_source: bool = False, source: Optional[str] = None) -> str:
        if isinstance(id, bool) or not isinstance(id, (int, float, str)):
            raise BrowserError(f"id {id!r}: must be a link number or a path/URL")
        if isinstance(id, float):
            id = int(id)
        for k, v in (("cursor", cursor), ("loc", loc), ("num_lines", num_lines)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise BrowserError(f"{k} {v!r}: must be a number")
        cursor, loc, num_lines = int(cursor), int(loc), int(num_lines)
        if isinstance(id, str) and re.fullmatch(r"-?\d+", id.strip()):
            id = int(id)                             # a link id sent as a string
        if view_source:
            if not isinstance(id, str):
                raise BrowserError("view_source needs `id` to be a path or URL")
            if not hasattr(self.backend, "fetch_source"):
                raise BrowserError("this browser's backend cannot show page sources")
            return self._view(self._add(self.backend.fetch_source(id)), loc, num_lines)
        if isinstance(id, str):
            doc = self.backend.fetch(id)
        elif id == -1:                               # scroll an open page
            page = self._page(cursor)
            return self._view(self._add(page.doc), loc, num_lines)
        else:
            page = self._page(cursor)
            if not 0 <= id < len(page.doc.links):
                raise BrowserError(f"link id {id} is not on page [{page.cursor}]"
                                   + (f" (its links are 0 to {len(page.doc.links) - 1})"
                                      if page.doc.links else " (it has no links)"))
            url, link_loc = page.doc.links[id]
            doc = self.backend.fetch(url)
            if loc < 0 and link_loc >= 0:
                loc = link_loc
        return self._view(self._add(doc), loc, num_lines)

    def find(self, pattern: str, cursor: int = -1) -> str:
        if not isinstance(pattern, str) or not pattern:
            raise BrowserError("find needs a non-empty `pattern` string")
        page = self._page(cursor if isinstance(cursor, int) else -2)
        needle = pattern.lower()
        lines, links = [], []
        for i, line in enumerate(page.doc.lines):
            if needle in _plain(line).lower():
                links.append((page.doc.url, i))
                lines.append(f"* 【{len(links) - 1}†match at L{i}】")
                lines.append(f"  {_plain(line)}")
        if not lines:
            lines = [f"No `{pattern}` found on page [{page.cursor}]."]
        doc = Document(url="", title=f"Find results for `{pattern}` in `{page.doc.title}`",
                       lines=lines, links=links)
        return self._view(self._add(doc), 0, max(len(lines), 1))

    def call(self, function: str, args: Dict[str, Any]) -> str:
        """One call the model made (`browser.search` -> "search"); errors come back as text."""
        fn = {"search": self.search, "open": self.open, "find": self.find}.get(function)
        if fn is None:
            return f"Error: the browser has no function {function!r} (search, open, find)"
        if not isinstance(args, dict):
            return "Error: the arguments must be a JSON object"
        try:
            return fn(**args)
        except TypeError as e:
            return f"Error: bad arguments for browser.{function}: {e}"
        except BrowserError as e:
            return f"Error: {e}"

    # ------------------------------------------------------------------ citations
    CITATION = re.compile(r"【(\d+)†L(\d+)(?:-L(\d+))?】")

    def resolve_citation(self, cursor: int, start: int, end: Optional[int] = None) -> Citation:
        """Page `cursor`'s lines start..end (as shown) -> the file and its 1-based line span."""
        if not 0 <= cursor < len(self.pages):
            raise BrowserError(f"cursor {cursor} names no page")
        doc = self.pages[cursor].doc
        end = start if end is None else end
        if not 0 <= start <= end < len(doc.lines):
            raise BrowserError(f"lines L{start}-L{end} are not on page [{cursor}] "
                               f"({len(doc.lines)} lines)")
        text = "\n".join(_plain(x) for x in doc.lines[start:end + 1])
        if doc.file_lines:
            a, b = doc.file_lines[start], doc.file_lines[end]
        else:
            a, b = start + 1, end + 1
        return Citation(cursor, doc.url, doc.title, doc.path, a, b, text)

    def citations(self, text: str) -> List[Citation]:
        """Every `【cursor†Lx-Ly】` in `text` that resolves (others are skipped)."""
        out = []
        for m in self.CITATION.finditer(text):
            try:
                out.append(self.resolve_citation(int(m.group(1)), int(m.group(2)),
                                                 int(m.group(3)) if m.group(3) else None))
            except BrowserError:
                pass
        return out
