"""Replace pip's launchers of kakoi and kakoi-runtime in the venv with lean ones.

pip's launcher imports re to tidy argv[0], and the interpreter's site module reads every
.pth file of the venv at each start. Together they cost about 10 ms (measured here), paid
by every kakoi command and by each of the kakoi-runtime commands that an engine runs. The
launchers written here start Python with -I -S (no site, no PYTHON* variables, no current
directory on the path) and put kakoi's source directory and the venv's site-packages on
sys.path themselves, the two entries that site would have added.

Run by scripts/install.sh after pip; a later `pip install` writes pip's launchers back,
which work, only slower.

Usage: write-launchers.py VENV
"""

import os
import sys
import sysconfig

# The same entry points as pyproject.toml's [project.scripts].
ENTRY_POINTS = {"kakoi": ("kakoi.cli.main", "main"),
                "kakoi-runtime": ("kakoi.cli.runtime", "launch")}

LAUNCHER = """\
#!{python} -IS
# Written by scripts/write-launchers.py: Python without site, kakoi's paths set here.
import sys
sys.path[:0] = {paths!r}
from {module} import {function}
sys.exit({function}())
"""


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.rsplit("Usage: ", 1)[1].strip(), file=sys.stderr)
        return 2
    venv = os.path.abspath(sys.argv[1])
    python = os.path.join(venv, "bin", "python3")
    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    site_packages = sysconfig.get_path("purelib", vars={"base": venv, "platbase": venv})
    for name, (module, function) in ENTRY_POINTS.items():
        path = os.path.join(venv, "bin", name)
        temporary = path + ".tmp"
        with open(temporary, "w") as file:
            file.write(LAUNCHER.format(python=python, paths=[source, site_packages],
                                       module=module, function=function))
        os.chmod(temporary, 0o755)
        os.rename(temporary, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
