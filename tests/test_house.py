"""Who may import whom (ARCHITECTURE.md): no circle among studylib's modules, no stage importing
another stage, launch importing no study; read from the code's own import statements."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "studylib"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The studylib modules `path` imports anywhere in it (in functions too), each as the module
    that holds the name."""
    found = set()
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found - {module_name(path)}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import loop, each as the path that closes it (depth-first search)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_the_house_has_no_circle_and_the_check_sees_one():
    edges = graph()
    assert circles(edges) == []
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize("stage", sorted((PACKAGE / "stages").glob("*.py")), ids=lambda p: p.stem)
def test_no_stage_imports_another_stage(stage):
    """Stages share the evaluation toolkit (studylib.evaluation); arms and Task.takes chain them."""
    assert not {m for m in imports(stage) if m.startswith("studylib.stages.")}


@pytest.mark.parametrize("stage", sorted((PACKAGE / "stages").glob("*.py")), ids=lambda p: p.stem)
def test_no_stage_builds_the_pool_s_batches_or_tags_or_asks_its_kind(stage):
    """The pretraining images reach a stage through pool.open_pool only, and no stage builds
    batches itself: the pool, a dataset's `train_batches` and `features.feature_batches` do
    (ARCHITECTURE.md)."""
    text = stage.read_text()
    assert not [word for word in ("simulate(", ".streamed", "Shard", "Batches(") if word in text]
    assert not imports(stage) & {"studylib.shards", "studylib.weak_labels.simulate"}


def test_both_kinds_of_pool_answer_everything_the_pool_interface_names():
    from studylib.pool import MemoryPool, Pool, StreamedPool

    names = set(Pool.__annotations__) | {n for n in vars(Pool) if not n.startswith("_")}
    assert {"identity", "count", "tags", "batches", "captioned_features"} <= names
    for kind in (MemoryPool, StreamedPool):
        assert {n for n in names if not hasattr(kind, n)} == set(), kind


def test_launch_imports_no_study_and_the_version_needs_no_torch():
    assert "studylib.study" not in imports(PACKAGE / "launch.py")
    import subprocess
    import sys

    code = (
        "import sys\nfrom studylib.cli import main\ntry:\n    main(['--version'])\n"
        "except SystemExit:\n    pass\nprint('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False"), out.stdout
