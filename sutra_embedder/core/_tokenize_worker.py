"""Entry point of a tokenizer worker process (see :mod:`.tokenize_procs`)."""

import sys

from sutra_embedder.core.tokenize_procs import serve

if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2] == "1")
