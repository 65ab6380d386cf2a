"""services.core is the light shared layer: it must import with the heavy stacks made unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

HEAVY = ("torch", "ray", "vllm", "deepspeed", "transformers")

PROBE = textwrap.dedent(
    f"""
    import importlib, pkgutil, sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {HEAVY!r}:
                raise ImportError(f"blocked heavy import: {{name}}")
            return None

    sys.meta_path.insert(0, Block())
    import services.core as core
    names = [m.name for m in pkgutil.walk_packages(core.__path__, "services.core.")]
    for name in names:
        importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
    assert not leaked, leaked
    print(len(names))
    """
)


def test_services_core_imports_without_heavy_stacks() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) >= 4  # schedule, config, wire, redis_conn at least


def test_probe_really_blocks() -> None:
    """The blocker itself works: importing torch under it fails (so the test above can fail)."""
    probe = PROBE.replace("import services.core as core", "import torch")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "blocked heavy import: torch" in done.stderr
