"""Running Python in a fresh interpreter that cannot import this package: the one proof that a saved folder loads
from its own remote code (`trust_remote_code=True`), as on a user's machine without vift.

Used by publishing (a folder is verified before upload), by the tests and by the demos. No library offers it:
transformers' `trust_remote_code` would otherwise quietly resolve `modeling_vift` from this installation.
"""

import os
import subprocess
import sys


# Installed first in a fresh interpreter: any import of `modeling_vift` fails, as on a user's machine without this
# package, so only the remote-code files saved next to the weights can provide the ViFT classes.
_BLOCK_VIFT_BOOTSTRAP = '''
import importlib.abc
import sys


class _BlockViFTPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "modeling_vift" or name.startswith("modeling_vift."):
            raise ImportError(f"{name} is blocked: this process must load ViFT through trust_remote_code only")
        return None


sys.meta_path.insert(0, _BlockViFTPackage())
sys.argv = sys.argv[1:]
with open(sys.argv[0], encoding="utf-8") as _f:
    _code = compile(_f.read(), sys.argv[0], "exec")
exec(_code, {"__name__": "__main__", "__file__": sys.argv[0]})
'''


def run_python_without_vift(script, cwd, args=(), timeout=300, python=None):
    """Runs the Python source `script` in a fresh interpreter (`python`, default the current one's executable) from
    `cwd`, with the
    `modeling_vift` package made unimportable and the Hub offline; returns the `subprocess.CompletedProcess`
    (text output captured). Remote code is cached under `cwd`, so parallel runs never share a module cache."""
    bootstrap = os.path.join(cwd, "_block_vift.py")
    script_path = os.path.join(cwd, "_script.py")
    with open(bootstrap, "w", encoding="utf-8") as f:
        f.write(_BLOCK_VIFT_BOOTSTRAP)
    with open(script_path, "w", encoding="utf-8") as f:
        f.write(script)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_TOKEN")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=os.path.join(cwd, "hf_modules"), TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [python or sys.executable, bootstrap, script_path, *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


__all__ = ["run_python_without_vift"]
