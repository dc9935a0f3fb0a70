"""Code keys from the import graph: the segpipe modules a stage can run, and one digest of their source.

    code_key(("segpipe.evaluation.evaluate",))      # sha256 over every segpipe module segpipe.evaluation.evaluate can import
    module_closure(("segpipe.training",))  # ("segpipe", "segpipe.config.budget", ..., "segpipe.training.schedule")

A stage's code is the closure of its entry modules under segpipe's own imports, read from the source
(`ast`), never by importing it, so a key costs neither TensorFlow nor Prefect. An edge is

- `import segpipe.x` or `from segpipe.x import y` anywhere in a module, function-local (lazy) imports
  included, and relative imports; not under `if TYPE_CHECKING:` (never run);
- `from segpipe.x import y` where `y` is a submodule: `segpipe.x.y` too;
- the packages above a module (their `__init__.py` runs when it is imported);
- a string constant that is exactly a segpipe module's dotted name: a registry that imports by name
  (`models.registry.BUILDERS`, imported by `build_model` through `importlib`).

The key is a sha256 over (module name, source bytes) in module-name order: content only, never paths or
modification times. `root` is the directory that holds the `segpipe` package; a copy elsewhere (a test
editing one file) gives that copy's key.
"""

from __future__ import annotations

import ast
import functools
import threading
import hashlib
import re
from pathlib import Path
from typing import Iterable

PACKAGE = "segpipe"
ROOT = Path(__file__).resolve().parent.parent  # the directory that holds the package
_DOTTED = re.compile(rf"^{PACKAGE}(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of segpipe module `name` under `root` (a package: its __init__.py), or None."""
    if not _DOTTED.match(name):
        return None
    base = Path(root).joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    path = base.parent / f"{base.name}.py"
    return path if path.is_file() else None


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _from_base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` statement in `module` names."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if node.level - 1 > len(parts) - 1:
        raise ImportError(f"{module}: relative import beyond the top-level package (line {node.lineno})")
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _nodes(tree: ast.AST) -> Iterable[ast.AST]:
    """Every node of `tree`, like `ast.walk`, except the bodies of `if TYPE_CHECKING:`."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo += node.orelse
        else:
            todo += ast.iter_child_nodes(node)


_PARSE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4096)
def _imports_in(name: str, is_package: bool, source: bytes, filename: str) -> tuple[frozenset[str], frozenset[str]]:
    """(modules its import statements name, names that are modules only where a source exists) of one module's
    source. Memoised on the source itself, so a process parses each module once however many stages key on
    it, and an edited file is parsed again."""
    with _PARSE_LOCK:  # CPython 3.11's ast.parse is not safe in threads ("AST constructor recursion depth mismatch")
        tree = ast.parse(source, filename=filename)
    named: set[str] = set()  # statements: must resolve
    maybe: set[str] = set()  # `from x import y` names and string constants: modules only where they are
    for node in _nodes(tree):
        if isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(name, is_package, node)
            named.add(base)
            maybe |= {f"{base}.{alias.name}" for alias in node.names if alias.name != "*"}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _DOTTED.match(node.value):
            maybe.add(node.value)
    return frozenset(named), frozenset(maybe)


def direct_imports(name: str, root: Path = ROOT) -> set[str]:
    """The segpipe modules that module `name` imports (see the module doc for what counts)."""
    path = module_file(name, root)
    if path is None:
        raise ModuleNotFoundError(f"no source for module {name!r} under {root}")
    named, maybe = _imports_in(name, path.name == "__init__.py", path.read_bytes(), str(path))
    found: set[str] = set()
    for module in named:
        if module == PACKAGE or module.startswith(PACKAGE + "."):
            if module_file(module, root) is None:
                raise ModuleNotFoundError(f"{path} imports {module}, which has no source under {root}")
            found.add(module)
    found |= {module for module in maybe if module_file(module, root) is not None}
    return {parent for module in found for parent in _parents(module)} | found


def module_closure(entry_modules: Iterable[str], root: Path = ROOT) -> tuple[str, ...]:
    """Every segpipe module that importing and running `entry_modules` can import, sorted by name."""
    entries = tuple(entry_modules)
    if not entries:
        raise ValueError("entry_modules: expected at least one segpipe module name")
    todo = []
    for entry in entries:
        if module_file(entry, root) is None:
            raise ModuleNotFoundError(
                f"entry module {entry!r}: expected the dotted name of a module of the {PACKAGE} package under {root}"
            )
        todo += [*_parents(entry), entry]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += sorted(direct_imports(module, root) - seen)
    return tuple(sorted(seen))


def code_key(entry_modules: Iterable[str], root: Path = ROOT) -> str:
    """sha256 (hex) over the name and source of every module in `module_closure(entry_modules)`."""
    h = hashlib.sha256()
    for module in module_closure(entry_modules, root):
        source = module_file(module, root).read_bytes()  # type: ignore[union-attr] - the closure resolved it
        h.update(f"{module}\0{len(source)}\0".encode())
        h.update(source)
    return h.hexdigest()
