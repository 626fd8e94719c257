"""The core imports with Beam, Faust and Kafka unavailable."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_core_imports_without_adapters() -> None:
    code = textwrap.dedent(
        """
        import sys
        BLOCKED = ("apache_beam", "faust", "kafka", "aiokafka", "mode", "torch", "pyarrow",
                   "sentence_transformers", "lancedb", "psycopg")

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked {name}")
                return None

        sys.meta_path.insert(0, Block())
        import sutra_embedder.core as core
        from sutra_embedder.core import Embedder, EmbedderConfig
        loaded = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
        assert not loaded, loaded
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
