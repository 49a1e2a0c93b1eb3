"""Fine-tune a causal LM on a MeZO task: the same command as ``zojax finetune``.

Examples::

    python experiments/finetune.py                                   # the short default job
    python experiments/finetune.py --method mezo --forward-budget 2000 --out runs/mezo
    python experiments/finetune.py --method mezo-gv --forward-budget 2000 --out runs/gv
    python experiments/finetune.py --out runs/gv --resume            # continue after Ctrl-C
    python experiments/plot.py runs/mezo runs/gv --out runs/compare.png

``--help`` lists every option and method.
"""

from __future__ import annotations

import sys

from zojax.cli import finetune_main

if __name__ == "__main__":
    sys.exit(finetune_main(prog="python experiments/finetune.py"))
