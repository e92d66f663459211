"""The package layout: no import cycles, and a method registry that is whole however it is reached."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _runtime_imports() -> dict[str, set[str]]:
    """hubbot's modules and the hubbot modules each imports when it runs (typing-only imports left out)."""
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (ROOT / "hubbot").rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and getattr(node.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in typing_only or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in files}
                continue
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found = full if full in files else target
                if found in files and found != name:
                    graph[name].add(found)
    return graph


def test_no_import_cycles():
    graph = _runtime_imports()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif not state.get(nxt):
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_stages_import_downwards_only():
    """recipe/ and methods/ know nothing of the merge, the service or the app; merge/ nothing of jobs/ or app/."""
    graph = _runtime_imports()
    forbidden = {"hubbot.methods": ("hubbot.recipe", "hubbot.merge", "hubbot.search", "hubbot.jobs", "hubbot.app"),
                 "hubbot.recipe": ("hubbot.merge", "hubbot.search", "hubbot.jobs", "hubbot.app", "hubbot.sources"),
                 "hubbot.model": ("hubbot.recipe", "hubbot.merge", "hubbot.search", "hubbot.jobs", "hubbot.app"),
                 "hubbot.merge": ("hubbot.jobs", "hubbot.app"),
                 "hubbot.search": ("hubbot.jobs", "hubbot.app")}
    bad = [f"{m} imports {t}" for m, targets in graph.items() for t in targets
           for stage, banned in forbidden.items() if m.startswith(stage) and t.startswith(banned)]
    assert not bad, "\n".join(bad)


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_registry_is_whole_after_importing_one_method_module():
    done = _fresh("import hubbot.methods.slerp\n"
                  "from hubbot import methods\n"
                  "names = ['linear', 'slerp', 'nuslerp', 'multislerp', 'karcher', 'task_arithmetic', 'ties',\n"
                  "         'dare_linear', 'dare_ties', 'breadcrumbs', 'breadcrumbs_ties', 'della', 'della_linear',\n"
                  "         'sce', 'model_stock', 'nearswap', 'arcee_fusion', 'passthrough']\n"
                  "print(sorted(methods.get(n).name for n in names) == sorted(names), len(methods.all_methods()))\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "18"]


def test_32_threads_asking_for_methods_at_once_on_a_fresh_interpreter():
    done = _fresh("import threading\n"
                  "import importlib\n"
                  "barrier = threading.Barrier(32)\n"
                  "failures = []\n"
                  "def ask(i):\n"
                  "    barrier.wait()\n"
                  "    try:\n"
                  "        methods = importlib.import_module('hubbot.methods')\n"
                  "        methods.get(['ties', 'linear', 'slerp', 'della'][i % 4])\n"
                  "        assert len(methods.all_methods()) == 18\n"
                  "    except Exception as exc:\n"
                  "        failures.append(repr(exc))\n"
                  "threads = [threading.Thread(target=ask, args=(i,)) for i in range(32)]\n"
                  "[t.start() for t in threads]\n"
                  "[t.join() for t in threads]\n"
                  "print(len(failures), failures[:3])\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("0 "), done.stdout
