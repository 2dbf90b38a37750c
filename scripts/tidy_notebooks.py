"""Normalise notebook metadata (kernel, language) so diffs show content, not editor state.

    .venv/bin/python scripts/tidy_notebooks.py notebooks/*.ipynb
"""

import json
import sys

# the kernel scripts/setup.sh installs into .venv
KERNELSPEC = {"display_name": "Python (nanogpt-edu)", "language": "python", "name": "nanogpt-edu"}

for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    nb["metadata"] = {"kernelspec": KERNELSPEC,
                      "language_info": {"name": "python", "pygments_lexer": "ipython3", "file_extension": ".py",
                                        "mimetype": "text/x-python", "nbconvert_exporter": "python",
                                        "codemirror_mode": {"name": "ipython", "version": 3}}}
    for cell in nb["cells"]:
        cell["metadata"].pop("execution", None)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")
