"""The harness's structure, held by parsing its source: short functions, one owner of the
run-folder format, the reference computed outside the process management, no dead code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import densenet_multi.parity as parity

PARITY = Path(parity.__file__).parent
MODULES = sorted(PARITY.glob("*.py"))
MAX_LINES = 60


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(tree: ast.Module) -> set[str]:
    """Every module a file imports, relative ones as written (``.worker``, ``..reference``)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def test_the_modules_are_there():
    names = {p.stem for p in MODULES}
    assert {"cases", "runfolder", "oracle", "runner", "worker", "compare", "status", "report",
            "cli"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_function_is_longer_than_60_lines(path):
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(_tree(path))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert not long, f"{path.name}: {long}"


@pytest.mark.parametrize("path", [p for p in MODULES if p.stem != "runfolder"],
                         ids=lambda p: p.name)
def test_only_runfolder_knows_the_key_separator(path):
    """Result keys (check::kind::name) are built and parsed in runfolder.py alone."""
    tree = _tree(path)
    docs = _docstrings(tree)
    found = [node.value for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and "::" in node.value and id(node) not in docs]
    assert not found, f"{path.name} spells the key separator: {found}"
    uses = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "SEP"]
    uses += [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names
             if a.name == "SEP"]
    assert not uses, f"{path.name} builds keys with the separator itself"


def test_the_harness_process_does_not_import_the_worker():
    for path in MODULES:
        if path.stem != "worker":
            assert ".worker" not in _imports(_tree(path)), path.name


def test_the_reference_is_computed_in_the_oracle_only():
    numerics = {"..reference", "..reference_grad", "densenet_multi.reference",
                "densenet_multi.reference_grad"}
    users = {p.stem for p in MODULES if _imports(_tree(p)) & numerics}
    assert users == {"oracle"}


def test_runfolder_documents_the_report_schema():
    from densenet_multi.parity import runfolder

    doc = runfolder.__doc__
    for word in ('"case", "check", "subject", "against", "name", "error", "tolerance"',
                 '"status"', "versions", "machine", "check::kind::name"):
        assert word in doc, word


def test_dead_code_is_gone():
    defined = {node.name for p in MODULES for node in ast.walk(_tree(p))
               if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert "check_order" not in defined
