"""The command-line layer: flag parsing and each command's ``main``, over the library.

``python -m infini_jax.train`` (and ``.eval``, ``.eval_passkey``, ``.eval_ppl``, ``.generate``,
``.sweep``, ``.convert``) are thin modules that run these. Nothing in the library imports this
package (tests/test_layout.py walks the imports).
"""

import os

# The repository checkout this package sits in: its configs/ and scripts/.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
