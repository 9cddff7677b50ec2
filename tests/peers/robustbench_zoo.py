"""Writes src/wideresnet/models/robustbench_zoo.py: every CIFAR-10 and CIFAR-100 entry of
RobustBench's model zoo, read (not imported: the zoo needs timm and torchvision) from the
released package's model_zoo/cifar10.py and cifar100.py, with what `wrn import --from
robustbench --entry NAME` needs to know of it: the architecture class, its arguments, and how
the entry's forward treats its input.

    python tests/peers/robustbench_zoo.py .peers/robustbench-1.1.1-py3-none-any.whl

Run once per RobustBench release; tests/test_peers.py checks the table against the same file.
"""

from __future__ import annotations

import ast
import hashlib
import sys
import zipfile
from pathlib import Path

ZOO = "robustbench/model_zoo"
OUT = Path(__file__).parents[2] / "src/wideresnet/models/robustbench_zoo.py"
SUPPORTED = ("WideResNet", "BoostingWideResNet", "DMWideResNet")
THREATS = {"linf": "Linf", "l2": "L2", "common_corruptions": "corruptions"}


def defaults(function: ast.FunctionDef) -> dict:
    """The keyword defaults of a def, as Python values where they are literals."""
    args = function.args.args[1:]  # without self
    values = function.args.defaults
    found = {}
    for arg, value in zip(args[len(args) - len(values) :], values):
        found[arg.arg] = value
    return found


def init_of(tree: ast.Module, name: str) -> ast.FunctionDef:
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")


class Reader:
    def __init__(self, wheel: Path) -> None:
        self.zip = zipfile.ZipFile(wheel)
        self.arch = {
            name: ast.parse(self.read(f"{ZOO}/architectures/{file}.py"))
            for name, file in (
                ("WideResNet", "wide_resnet"),
                ("BoostingWideResNet", "boosting_wide_resnet"),
                ("DMWideResNet", "dm_wide_resnet"),
            )
        }
        dm = self.arch["DMWideResNet"]
        self.constants = {  # CIFAR10_MEAN and the like, from dm_wide_resnet.py
            n.targets[0].id: ast.literal_eval(n.value)
            for n in dm.body
            if isinstance(n, ast.Assign)
            and isinstance(n.targets[0], ast.Name)
            and n.targets[0].id.startswith("CIFAR")
        }

    def read(self, path: str) -> str:
        return self.zip.read(path).decode()

    def value(self, node: ast.AST):
        if isinstance(node, ast.Name) and node.id in self.constants:
            return list(self.constants[node.id])
        if isinstance(node, ast.Name | ast.Attribute):
            name = ast.unparse(node)
            return {"Swish": "swish", "nn.SiLU": "swish", "nn.ReLU": "relu"}.get(name, name)
        return ast.literal_eval(node)

    def arguments(self, arch: str, call: ast.Call | None) -> dict:
        """The architecture's constructor arguments: its defaults, then the call's."""
        init = init_of(self.arch[arch], arch)
        names = [a.arg for a in init.args.args[1:]]
        found = {k: self.value(v) for k, v in defaults(init).items()}
        if call is not None:
            found.update({names[i]: self.value(a) for i, a in enumerate(call.args)})
            found.update({k.arg: self.value(k.value) for k in call.keywords})
        if arch == "BoostingWideResNet":  # its super().__init__: sub_block1, bias_last
            found.update(sub_block1=True, bias_last=False, num_classes=10)
        return found

    def entry(self, tree: ast.Module, model: ast.AST) -> dict:
        """{"arch", "args", "inputs"} of one entry's 'model' value."""
        call = model.body if isinstance(model, ast.Lambda) else None
        if isinstance(call, ast.Call):
            name = ast.unparse(call.func)
            if name not in ("WideResNet", "DMWideResNet"):
                return {"arch": name}
            args = self.arguments(name, call)
            inputs = "mean_std" if name == "DMWideResNet" else "unit"
            return {"arch": name, "args": args, "inputs": inputs}
        name = ast.unparse(model if call is None else model.body)
        if name == "BoostingWideResNet":
            return {"arch": name, "args": self.arguments(name, None), "inputs": "mu_sigma"}
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        if name not in classes:
            return {"arch": name}
        cls = classes[name]
        base = ast.unparse(cls.bases[0]) if cls.bases else ""
        if base != "WideResNet":
            return {"arch": f"{name} ({base})"}
        init = init_of(tree, name)
        args = self.arguments("WideResNet", None)
        own = {k: self.value(v) for k, v in defaults(init).items()}  # the subclass's defaults
        for call in ast.walk(init):
            if isinstance(call, ast.Call) and ast.unparse(call.func).endswith("__init__"):
                for k in call.keywords:
                    given = ast.unparse(k.value)
                    args[k.arg] = own[given] if given in own else self.value(k.value)
        buffers = {}
        for call in ast.walk(init):
            if isinstance(call, ast.Call) and ast.unparse(call.func) == "self.register_buffer":
                tensor = call.args[1].func.value  # torch.tensor([...]).view(...)
                value = tensor.args[0]
                if isinstance(value, ast.BinOp):  # [0.5] * 3
                    value = ast.literal_eval(value.left) * ast.literal_eval(value.right)
                else:
                    value = ast.literal_eval(value)
                buffers[ast.literal_eval(call.args[0])] = value
        forward = next(
            n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "forward"
        )
        text = ast.unparse(forward)
        entry = {"arch": "WideResNet", "args": args}
        if "(x - self.mu) / self.sigma" in text:
            entry.update(inputs="mu_sigma", mean=buffers["mu"], std=buffers["sigma"])
        elif "2.0 * x - 1.0" in text:
            entry.update(inputs="mean_std", mean=[0.5] * 3, std=[0.5] * 3)
        else:
            return {"arch": f"{name} (WideResNet with its own input transform)"}
        return entry

    def zoo(self) -> dict:
        table = {}
        for dataset in ("cifar10", "cifar100"):
            tree = ast.parse(self.read(f"{ZOO}/{dataset}.py"))
            for node in tree.body:
                if not (
                    isinstance(node, ast.Assign)
                    and isinstance(node.value, ast.Call)
                    and ast.unparse(node.value.func) == "OrderedDict"
                    and node.value.args
                    and isinstance(node.value.args[0], ast.List)
                ):
                    continue
                threat = THREATS.get(node.targets[0].id)
                if threat is None:  # the dict of the dicts
                    continue
                for item in node.value.args[0].elts:
                    name = ast.literal_eval(item.elts[0])
                    spec = item.elts[1]
                    model = spec.values[[ast.literal_eval(k) for k in spec.keys].index("model")]
                    entry = self.entry(tree, model)
                    if entry["arch"] == "DMWideResNet":
                        args = entry["args"]
                        entry.update(mean=args.pop("mean"), std=args.pop("std"))
                    table[f"{dataset}/{threat}/{name}"] = entry
        return table


def row(entry: dict) -> tuple:
    """One entry as (arch, depth, width, classes, inputs, activation, mean, std), or (arch,)
    for an architecture that is not one of these WRNs."""
    if entry["arch"] not in SUPPORTED:
        return (entry["arch"],)
    args = entry["args"]
    width = args.get("widen_factor", args.get("width"))
    activation = args.get("activation_fn", "relu")
    mean, std = entry.get("mean"), entry.get("std")
    rounded = [tuple(round(v, 6) for v in x) if x else None for x in (mean, std)]
    shape = (args["depth"], width, args["num_classes"])
    return (entry["arch"], *shape, entry["inputs"], activation, *rounded)


def main(wheel: str) -> None:
    digest = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()
    zoo = Reader(Path(wheel)).zoo()
    wrns = sum(entry["arch"] in SUPPORTED for entry in zoo.values())
    lines = "".join(f"    {key!r}: {row(entry)!r},\n" for key, entry in zoo.items())
    OUT.write_text(
        '"""RobustBench\'s CIFAR-10 and CIFAR-100 model zoo, entry by entry: (architecture\n'
        "class, depth, width, classes, inputs, activation, mean, std); `inputs` says how the\n"
        "entry's forward treats its [0, 1] input: unit, as it is; mu_sigma, (x - mu) / sigma\n"
        "with its own buffers; mean_std, the mean and std given here, which its state dict does\n"
        "not hold. An entry of one value names an architecture that is not one of these WRNs.\n\n"
        f"Generated by tests/peers/robustbench_zoo.py from {Path(wheel).name}\n"
        f"(SHA-256 {digest[:32]}\n{digest[32:]}):\n"
        f"{len(zoo)} entries, {wrns} of them WideResNet, BoostingWideResNet or DMWideResNet.\n"
        '"""\n\n'
        "# ruff: noqa: E501 (one entry a line)\n"
        "# fmt: off\n"
        f"RELEASE = {Path(wheel).name.split('-py3')[0]!r}\n"
        f"ZOO = {{\n{lines}}}\n"
    )
    print(f"{OUT}: {len(zoo)} entries, {wrns} WRNs")


if __name__ == "__main__":
    main(sys.argv[1])
