"""The README's layer example runs as written."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_layer_example_runs_and_masks_padding():
    example = python_blocks()[0]
    check = (
        "\nnp.testing.assert_allclose(out['weights'].sum(-1), 1, rtol=1e-6)"
        "\nassert (out['weights'][..., 3:] == 0).all()\n"
    )
    subprocess.run([sys.executable, "-c", example + check], check=True,
                   cwd=README.parent)
