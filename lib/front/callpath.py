"""The path of a notebook's `params` through lib, read from the source (nothing is run).

    python -m lib.front.callpath notebooks/evaluate.py [--name params]

A *stop* is a lib function entered on the path: one that receives the tracked value as an
argument (positional or keyword: inside it, the parameter that received it is tracked), or one
whose result becomes it (a call assigned to a tracked name, or returned by a function that
produces it: inside it, the names it returns are tracked). Stops are listed depth first, in
the order the calls run (arguments before the call); a function already on the call stack is
not entered again. A *return to a module already left* is a stop whose module differs from the
previous stop's and appears earlier in the path. Calls that cannot be resolved from the source
(a method of an object, a function held in a variable) end the path there; they are listed.
"""
from __future__ import annotations

import argparse
import ast
import builtins
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

LIB = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Stop:
    depth: int
    function: str        # dotted: lib.protocol.run.evaluate, lib.protocol.engine.Engine.__init__
    module: str
    where: str           # path:line of the definition


class Source:
    """Every module of the package under `root`: its functions (and methods) and import names."""

    def __init__(self, root: Path = LIB):
        self.root = root
        self.functions: dict[str, tuple[str, ast.FunctionDef, Path]] = {}
        self.aliases: dict[str, dict[str, str]] = {}
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root.parent).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            self.add(module, ast.parse(path.read_text()), path, package=path.name == "__init__.py")

    def add(self, module: str, tree: ast.Module, path: Path, package: bool = False) -> None:
        names = self.aliases.setdefault(module, {})
        base = module.split(".") if package else module.split(".")[:-1]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:     # `import a.b` binds a; `import a.b as c` binds c to a.b
                    top = alias.name.split(".")[0]
                    names[alias.asname or top] = alias.name if alias.asname else top
            elif isinstance(node, ast.ImportFrom):
                prefix = node.module
                if node.level:
                    prefix = ".".join(base[:len(base) - node.level + 1] + [node.module or ""])
                for alias in node.names:
                    names[alias.asname or alias.name] = f"{prefix.rstrip('.')}.{alias.name}"
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions[f"{module}.{node.name}"] = (module, node, path)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        self.functions[f"{module}.{node.name}.{item.name}"] = (module, item, path)

    def resolve(self, func: ast.expr, module: str, cls: str | None) -> str | None:
        """The dotted name a call's `func` stands for: a lib function, a name from outside the
        package ("" for a builtin or another package's), or None (not resolvable from the source)."""
        chain = []
        while isinstance(func, ast.Attribute):
            chain.insert(0, func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            return None
        if func.id == "self" and cls:
            dotted = ".".join([cls, *chain])
        elif func.id in self.aliases.get(module, {}):
            dotted = ".".join([self.aliases[module][func.id], *chain])
            if not dotted.startswith(self.root.name + "."):
                return ""
        elif hasattr(builtins, func.id):
            return ""
        else:
            dotted = ".".join([module, func.id, *chain])
        if dotted in self.functions:
            return dotted
        return f"{dotted}.__init__" if f"{dotted}.__init__" in self.functions else None


def calls_in_order(node: ast.AST) -> list[ast.Call]:
    """The calls under `node` in the order they run: arguments before the call that takes them."""
    found = []
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            found += calls_in_order(child)
    if isinstance(node, ast.Call):
        found.append(node)
    return found


def producers(body: list[ast.stmt], tracked: set[str]) -> set[int]:
    """ids of the calls whose result becomes a tracked name (assigned to it, or returned)."""
    out = set()
    for stmt in body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and any(
                    isinstance(t, ast.Name) and t.id in tracked for t in node.targets):
                out.add(id(node.value))
            elif isinstance(node, ast.Return) and isinstance(node.value, ast.Call) and "<return>" in tracked:
                out.add(id(node.value))
    return out


def receiving(call: ast.Call, tracked: set[str], function: ast.FunctionDef, method: bool) -> set[str]:
    """The parameters of `function` that receive a tracked name in `call`."""
    params = [a.arg for a in function.args.posonlyargs + function.args.args][1 if method else 0:]
    out = {params[i] for i, arg in enumerate(call.args)
           if i < len(params) and isinstance(arg, ast.Name) and arg.id in tracked}
    return out | {k.arg for k in call.keywords if isinstance(k.value, ast.Name) and k.value.id in tracked}


def returned_names(function: ast.FunctionDef) -> set[str]:
    """What a producer tracks: the names it returns, and "<return>" (a call it returns)."""
    names = {n.value.id for n in ast.walk(function)
             if isinstance(n, ast.Return) and isinstance(n.value, ast.Name)}
    return names | {"<return>"}


def takes(call: ast.Call, tracked: set[str]) -> bool:
    return any(isinstance(a, ast.Name) and a.id in tracked
               for a in [*call.args, *(k.value for k in call.keywords)])


@dataclass
class Tracer:
    """The stops found so far, and the calls on the path that could not be resolved."""

    source: Source
    stops: list = field(default_factory=list)
    unresolved: list = field(default_factory=list)

    def walk(self, body: list[ast.stmt], module: str, cls: str | None, tracked: set[str],
             stack: tuple = ()) -> None:
        """Add the stops of the calls in `body` that take or make a tracked name, depth first."""
        made = producers(body, tracked)
        for call in (c for stmt in body for c in calls_in_order(stmt)):
            if not takes(call, tracked) and id(call) not in made:
                continue
            name = self.source.resolve(call.func, module, cls)
            if name is None:
                self.unresolved.append(f"{module}: {ast.unparse(call.func)}(...) line {call.lineno}")
            if not name or name in stack:
                continue
            callee_module, function, path = self.source.functions[name]
            method = name.count(".") - callee_module.count(".") == 2
            inner = receiving(call, tracked, function, method)
            if id(call) in made:
                inner |= returned_names(function)
            where = f"{path.relative_to(self.source.root.parent)}:{function.lineno}"
            self.stops.append(Stop(len(stack), name, callee_module, where))
            self.walk(function.body, callee_module, name.rsplit(".", 1)[0] if method else None, inner,
                      (*stack, name))


def trace(notebook: Path, name: str = "params", root: Path = LIB) -> tuple[list[Stop], list[str]]:
    """(the stops of `name` from the notebook's top-level code through the package, the calls on
    the path that could not be resolved)."""
    source = Source(root)
    tree = ast.parse(Path(notebook).read_text())
    source.add("<notebook>", tree, Path(notebook))
    tracer = Tracer(source)
    tracer.walk(tree.body, "<notebook>", None, {name})
    return tracer.stops, tracer.unresolved


def measure(stops: list[Stop]) -> dict:
    """n_stops, modules (in first-visit order), returns (to a module already left), entries per module."""
    returns, seen, previous = 0, [], None
    for stop in stops:
        if stop.module != previous and stop.module in seen:
            returns += 1
        if stop.module not in seen:
            seen.append(stop.module)
        previous = stop.module
    return {"n_stops": len(stops), "modules": seen, "returns": returns,
            "entries": Counter(s.module for s in stops)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m lib.front.callpath", description=__doc__.split("\n")[0])
    parser.add_argument("notebook", help="a notebook's .py side, e.g. notebooks/evaluate.py")
    parser.add_argument("--name", default="params", help="the variable to follow (default: params)")
    args = parser.parse_args(argv)
    stops, unresolved = trace(Path(args.notebook), args.name)
    for i, stop in enumerate(stops, 1):
        print(f"{i:3d} {'  ' * stop.depth}{stop.function}  ({stop.where})")
    m = measure(stops)
    print(f"{m['n_stops']} stops in {len(m['modules'])} modules; {m['returns']} of them returns to a "
          "module already left")
    print("entries per module: " + ", ".join(f"{k} {v}" for k, v in m["entries"].most_common()))
    if unresolved:
        print("not followed (not resolvable from the source): " + "; ".join(unresolved))
    return m


if __name__ == "__main__":
    main()
