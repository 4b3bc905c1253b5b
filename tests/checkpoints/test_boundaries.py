"""Node and gateway code imports nothing of the trainer; the checkpoint format loads no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = "services.trainer"


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(name: str, path: Path) -> set[str]:
    """In-repo modules `path` imports anywhere (lazy imports inside functions count too),
    with every parent package, since importing `a.b.c` runs `a` and `a.b` first."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if _module_file(candidate) is not None:
                    found.add(candidate)
    return found


def _chain_to_trainer(start: str) -> list[str] | None:
    """The import chain from `start` to a module of services.trainer, or None."""
    seen = {start: [start]}
    todo = deque([start])
    while todo:
        name = todo.popleft()
        if name == FORBIDDEN or name.startswith(FORBIDDEN + "."):
            return seen[name]
        path = _module_file(name)
        assert path is not None, name
        for dep in sorted(_imports(name, path)):
            if dep not in seen:
                seen[dep] = [*seen[name], dep]
                todo.append(dep)
    return None


def _modules(package: str) -> list[str]:
    folder = ROOT.joinpath(*package.split("."))
    return sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in folder.rglob("*.py")
    )


def test_node_and_gateway_import_nothing_of_the_trainer() -> None:
    modules = _modules("services.node") + _modules("services.gateway")
    assert len(modules) > 20
    chains = [chain for m in modules if (chain := _chain_to_trainer(m)) is not None]
    assert not chains, "a node host or the gateway would need the trainer's code:\n" + "\n".join(
        " -> ".join(chain) for chain in chains
    )


def test_the_scan_follows_imports_to_the_trainer() -> None:
    # The checker itself: from-imports are resolved, and a chain into the trainer is named.
    name = "services.node.pulling.puller"
    puller = _module_file(name)
    assert puller is not None and "checkpoints.manifest" in _imports(name, puller)
    chain = _chain_to_trainer("services.trainer.jobs")
    assert chain == ["services.trainer.jobs"]
    loop = _module_file("services.trainer.loop")
    assert loop is not None and "services.trainer.checkpoint" in _imports(
        "services.trainer.loop", loop
    )


def test_checkpoint_format_loads_no_torch() -> None:
    code = (
        "import sys, checkpoints, checkpoints.manifest, checkpoints.settings, "
        "checkpoints.durable\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') "
        "or m.startswith('services'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"importing checkpoints loaded {done.stdout}{done.stderr}"
