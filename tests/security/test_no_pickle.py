"""No pickle-based loading anywhere in the shipped code: an AST check over every module of the three
packages (and the benchmarks), tested against code that does unpickle."""
import ast

import pytest

from helpers import ROOT

SOURCES = [ROOT / "operator", ROOT / "trainer_image", ROOT / "server_image", ROOT / "benchmarks"]
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def pickle_uses(source: str) -> list[str]:
    """Each way the code could unpickle: importing a pickle module, torch.load / torch.jit.load without
    weights_only=True, numpy load with allow_pickle not literally False, pandas read_pickle."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PICKLE_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            kwargs = {k.arg: k.value for k in node.keywords}
            if name in ("torch.load", "torch.jit.load"):
                weights_only = kwargs.get("weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    found.append(f"{name}(...) at line {node.lineno}")
            elif name in ("np.load", "numpy.load"):
                allow = kwargs.get("allow_pickle")
                if not (isinstance(allow, ast.Constant) and allow.value is False):
                    found.append(f"{name}(...) without allow_pickle=False at line {node.lineno}")
            elif name.endswith(("read_pickle", "pickle.load", "pickle.loads")):
                found.append(f"{name}(...) at line {node.lineno}")
    return found


@pytest.mark.parametrize("base", SOURCES, ids=lambda p: p.name)
def test_no_module_can_unpickle(base):
    files = sorted(base.rglob("*.py"))
    assert files
    offenders = {str(f.relative_to(ROOT)): uses for f in files if (uses := pickle_uses(f.read_text()))}
    assert offenders == {}


@pytest.mark.parametrize("code", [
    "import pickle", "from joblib import load", "import torch\ntorch.load('m.pt')",
    "import torch\ntorch.load('m.pt', weights_only=False)", "import numpy as np\nnp.load('x.npz')",
    "import numpy as np\nnp.load('x.npz', allow_pickle=True)", "import pandas as pd\npd.read_pickle('x')",
    "import torch\ntorch.jit.load('m.pt')",
])
def test_the_check_catches_each_way_to_unpickle(code):
    assert pickle_uses(code)


def test_the_safe_forms_pass():
    assert pickle_uses("import numpy as np\nnp.load('x.npz', allow_pickle=False)\n"
                       "import torch\ntorch.load('w.pt', weights_only=True)\n"
                       "import safetensors.torch\nsafetensors.torch.load_file('m.safetensors')") == []
