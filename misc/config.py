"""Flags in typed sections: the parser machinery behind run_sample.py (which holds the sections, their
defaults, the recipe tables and the pipelines).

A section is a dataclass decorated with ``@section(name)``: each field is one flag ``--<field>``, typed by
its annotation (bool, int, float, str, ``X | None``, ``tuple[X, X]`` for a fixed count, ``tuple[X, ...]`` for
one or more), with its default and ``flag(...)`` metadata: the help text and the checks the value must
pass (choices, minimum, multiple, ordered pair, sweep). A section may define ``check(self, args)`` for
rules that join several flags; it raises ``misc.errors.UserError``. Each step module declares the
sections it reads (``SECTIONS = ("run", "data", ...)``).

``Config.parse`` turns a command line into ``Flags`` (an argparse Namespace): the flags typed on the command
line win; the others take, in this order (a later one wins), the section defaults,
``dataset_recipes[--dataset]``, ``method_recipes[--method]``, ``published_recipes[(--method, --dataset)]``,
the table of a choice flag's value (``choice_recipes``, e.g. ``--seg_recipe``) and, for the toy dataset
(no dataset root given), ``toy_recipe`` then ``toy_method_recipes[--method]``.
Flags marked ``output=True`` are method outputs: for every method but the base one their value gets a
``_<method>`` suffix (before a file extension: cam -> cam_rib, sess/res50_irn.pth -> sess/res50_irn_rib.pth)
unless typed. Every recipe key must be a flag, and every value of the sections the steps to run read is
checked, before any step runs; a mistake is one UserError line. ``--<step>_pass False`` skips a step of the
method's pipeline; a ``_pass`` flag of a step outside it is an error; an ``optional_steps`` step runs only
when its flag is True as well.

    python -m misc.config --markdown > docs/flags.md     # the flags page, generated from run_sample.py
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Callable, Sequence

from misc.cli import str2bool
from misc.errors import UserError


def flag(default: Any, help: str, *, choices: Sequence[Any] | None = None, minimum: float | None = None,
         maximum: float | None = None, above: float | None = None, multiple_of: int | None = None,
         ordered: bool = False, sweep: bool = False, output: bool = False, shown: str | None = None,
         metavar: Sequence[str] | None = None) -> Any:
    """A section field: its default and metadata. ``minimum``/``maximum`` (inclusive) and ``above``
    (exclusive) bound a number or every number of a tuple; ``multiple_of`` an int; ``ordered``: a (LO, HI)
    pair with LO <= HI; ``sweep``: (LO, HI, STEP) with LO <= HI and STEP > 0; ``output``: a method output
    (see the module doc); ``shown``: how the docs show a machine-dependent default."""
    meta = dict(help=help, choices=tuple(choices) if choices is not None else None, minimum=minimum, maximum=maximum,
                above=above, multiple_of=multiple_of, ordered=ordered, sweep=sweep, output=output, shown=shown,
                metavar=tuple(metavar) if metavar else None)
    return field(default=default, metadata=meta)


def section(name: str) -> Callable[[type], type]:
    """Class decorator: make a dataclass of flags, known as section ``name``; its docstring's first line is
    the title shown in --help and docs."""
    def wrap(cls: type) -> type:
        cls = dataclass(cls)
        cls.section_name = name
        return cls
    return wrap


class Flags(argparse.Namespace):
    """The resolved flags of a run: one attribute per flag plus ``toy`` (True when no dataset root is given
    and the toy dataset is generated); ``config`` (a slot, not a flag) is the Config that parsed them."""

    __slots__ = ("config",)


@dataclass(frozen=True)
class Flag:
    """One flag: its section, name, Python type, default and metadata."""

    section: str
    name: str
    kind: Any  # the annotation, resolved
    default: Any
    meta: dict

    @property
    def scalar(self) -> type:
        """The element type: bool, int, float or str."""
        t = _strip_optional(self.kind)
        return typing.get_args(t)[0] if typing.get_origin(t) is tuple else t

    @property
    def count(self) -> int | str | None:
        """None for a single value, n for a tuple of n, '+' for one or more."""
        t = _strip_optional(self.kind)
        if typing.get_origin(t) is not tuple:
            return None
        args = typing.get_args(t)
        return "+" if len(args) == 2 and args[1] is Ellipsis else len(args)

    @property
    def optional(self) -> bool:
        return _strip_optional(self.kind) is not self.kind


def _strip_optional(t: Any) -> Any:
    """X for ``X | None``, else t."""
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        rest = [a for a in typing.get_args(t) if a is not type(None)]
        return rest[0] if len(rest) == 1 else t
    return t


def fmt(v: Any) -> str:
    """A value as typed on a command line (tuples space-separated)."""
    if isinstance(v, (tuple, list)):
        return " ".join(fmt(x) for x in v)
    return "none" if v is None else str(v)


@dataclass
class Config:
    """Sections, pipelines and recipe tables of a toolkit (run_sample.py builds the one instance, CONFIG).

    sections: the section dataclasses in display order; pipelines: method -> its ordered steps (modules
    ``<step_package>.<step>``, each declaring SECTIONS); the recipe tables, see the module doc;
    base_method: the method whose outputs keep the plain names; derived: attributes resolve sets that are
    not flags, with the section they belong to; choice_recipes: {flag: {value: table}}, the table of the
    flag's value applied after published_recipes and before the toy tables (e.g. --seg_recipe); optional_steps:
    {step: bool flag}, steps of the pipelines that run only when their flag is True (a stage every pipeline
    can end with, e.g. the segmentation stage under --seg).
    """

    sections: tuple[type, ...]
    pipelines: dict[str, tuple[str, ...]]
    dataset_recipes: dict[str, dict[str, Any]]
    method_recipes: dict[str, dict[str, Any]]
    published_recipes: dict[tuple[str, str], dict[str, Any]]
    toy_recipe: dict[str, Any]
    toy_method_recipes: dict[str, dict[str, Any]]
    base_method: str
    description: str = ""
    step_package: str = "step"
    derived: dict[str, str] = field(default_factory=lambda: {"toy": "data"})
    choice_recipes: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    optional_steps: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.flags: dict[str, Flag] = {}
        for cls in self.sections:
            hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
            for f in dataclasses.fields(cls):
                if f.name in self.flags:
                    raise ValueError(f"flag {f.name} declared twice")
                default = f.default if f.default is not dataclasses.MISSING else None
                self.flags[f.name] = Flag(cls.section_name, f.name, hints[f.name], default, dict(f.metadata))
        self.steps = tuple(dict.fromkeys(s for p in self.pipelines.values() for s in p))

    # ----- what each step reads

    def step_sections(self, step: str) -> tuple[str, ...]:
        """The SECTIONS the step module declares."""
        return tuple(importlib.import_module(f"{self.step_package}.{step}").SECTIONS)

    def section_flags(self, name: str) -> list[str]:
        """The flag names of section ``name``, in order."""
        return [f.name for f in self.flags.values() if f.section == name]

    def sections_read(self, steps: Sequence[str]) -> list[str]:
        """The sections any of ``steps`` reads, in display order."""
        read = {s for st in steps for s in self.step_sections(st)}
        return [c.section_name for c in self.sections if c.section_name in read]

    def default(self, name: str) -> Any:
        """The section default of a flag."""
        return self.flags[name].default

    # ----- the parser

    def build_parser(self, method: str, steps: Sequence[str] | None = None) -> argparse.ArgumentParser:
        """The argparse parser of every flag; --help lists only those of the sections ``steps`` (default:
        the pipeline of ``method``) read, and their ``_pass`` flags."""
        shown_steps = tuple(steps) if steps else self.pipelines[method]
        shown = set(self.sections_read(shown_steps))
        others = ", ".join(f"--method {m} --help" for m in self.pipelines if m != method)
        p = argparse.ArgumentParser(
            usage="%(prog)s [--method M] [--<flag> VALUE ...]",
            description=self.description + (f"\nShown: the flags of --method {method} ({' -> '.join(shown_steps)}); "
                                             f"{others} for the others." if not steps else ""),
            formatter_class=argparse.RawDescriptionHelpFormatter)
        for cls in self.sections:
            name = cls.section_name
            g = p.add_argument_group(f"{(cls.__doc__ or name).strip().splitlines()[0]} [{name}]")
            for f in (f for f in self.flags.values() if f.section == name):
                kw: dict[str, Any] = dict(dest=f.name, default=f.default)
                kw["type"] = str2bool if f.scalar is bool else f.scalar
                if f.count is not None:
                    kw["nargs"] = f.count
                if f.meta["choices"]:
                    kw["choices"] = f.meta["choices"]
                if f.meta["metavar"]:
                    kw["metavar"] = f.meta["metavar"]
                default = f.meta["shown"] or fmt(method_output(f.default, method) if f.meta["output"] and
                                                 method != self.base_method else f.default)
                kw["help"] = f"{f.meta['help']} (default: {default})" if name in shown else argparse.SUPPRESS
                g.add_argument(f"--{f.name}", **kw)
        g = p.add_argument_group("steps to run [steps]")
        for s in self.steps:
            users = [m for m, pl in self.pipelines.items() if s in pl]
            help_ = f"run {s} (a step of --method {', '.join(users)})" if s in shown_steps else argparse.SUPPRESS
            g.add_argument(f"--{s}_pass", dest=f"{s}_pass", type=str2bool, default=True, help=help_)
        return p

    def parse(self, argv: Sequence[str] | None = None, steps: Sequence[str] | None = None) -> Flags:
        """Parse a command line for the pipeline of --method (or, with ``steps``, for those steps alone, as
        ``python -m step.<name>`` does), resolve the recipes, check every flag the steps read. Returns Flags."""
        argv = list(sys.argv[1:] if argv is None else argv)
        self.check_recipes()
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--method", default=None, choices=tuple(self.pipelines))
        known, _ = pre.parse_known_args(argv)
        method = known.method or self.default("method")
        if known.method is None and steps and not set(steps) <= set(self.pipelines[method]):
            method = next((m for m, pl in self.pipelines.items() if set(steps) <= set(pl)), method)
        parser = self.build_parser(method, steps)
        args = parser.parse_args(argv, namespace=Flags())
        args.config = self
        args.method = method
        explicit = self._explicit(parser, argv)
        for name, f in self.flags.items():  # argparse gives lists for nargs: tuples, like the defaults
            if f.count is not None and isinstance(getattr(args, name), list):
                setattr(args, name, tuple(getattr(args, name)))
        self.resolve(args, explicit)
        run = tuple(steps) if steps else self.pipelines[args.method]
        missing = [s for s in run if s not in self.pipelines[args.method]]
        if missing:
            raise UserError(f"--method {args.method}: {missing[0]} is not one of its steps "
                            f"({', '.join(self.pipelines[args.method])})")
        for s in self.steps:
            if f"{s}_pass" in explicit and s not in self.pipelines[args.method]:
                raise UserError(f"--{s}_pass: {s} is not a step of --method {args.method} "
                                f"({', '.join(self.pipelines[args.method])}); drop the flag")
            if s not in self.pipelines[args.method] or (s in self.optional_steps
                                                         and not getattr(args, self.optional_steps[s])):
                setattr(args, f"{s}_pass", False)
        self.validate(args, run)
        return args

    @staticmethod
    def _explicit(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
        """The dests typed on the command line (the parser re-run with no defaults)."""
        probe = argparse.ArgumentParser(add_help=False)
        for act in parser._actions:
            if act.option_strings and act.dest != "help":
                probe.add_argument(*act.option_strings, dest=act.dest, nargs=act.nargs, default=argparse.SUPPRESS)
        return set(vars(probe.parse_known_args(argv)[0]))

    # ----- recipes

    def recipe_tables(self) -> list[tuple[str, dict[str, Any]]]:
        """(name as written in run_sample.py, table) of every recipe table."""
        out = [(f"DATASET_RECIPES[{k!r}]", v) for k, v in self.dataset_recipes.items()]
        out += [(f"METHOD_RECIPES[{k!r}]", v) for k, v in self.method_recipes.items()]
        out += [(f"PUBLISHED_RECIPES[{k!r}]", v) for k, v in self.published_recipes.items()]
        out += [(f"{f.upper()}S[{v!r}]", t) for f, tables in self.choice_recipes.items() for v, t in tables.items()]
        out += [("TOY_RECIPE", self.toy_recipe)]
        out += [(f"TOY_METHOD_RECIPES[{k!r}]", v) for k, v in self.toy_method_recipes.items()]
        return out

    def check_recipes(self) -> None:
        """Every recipe key is a flag and every table is keyed by a known method / dataset; else UserError."""
        datasets, methods = self.flags["dataset"].meta["choices"], tuple(self.pipelines)
        keys = ([(f"DATASET_RECIPES[{d!r}]", d, datasets) for d in self.dataset_recipes]
                + [(f"METHOD_RECIPES[{m!r}]", m, methods) for m in self.method_recipes]
                + [(f"TOY_METHOD_RECIPES[{m!r}]", m, methods) for m in self.toy_method_recipes])
        for m, d in self.published_recipes:
            keys += [(f"PUBLISHED_RECIPES[{(m, d)!r}]", m, methods), (f"PUBLISHED_RECIPES[{(m, d)!r}]", d, datasets)]
        for where, key, known in keys:
            if key not in known:
                raise UserError(f"run_sample.py {where}: {key!r} is not one of {', '.join(known)}; fix the key")
        for f, tables in self.choice_recipes.items():
            for v in tables:
                if f not in self.flags or v not in (self.flags[f].meta["choices"] or ()):
                    raise UserError(f"run_sample.py {f.upper()}S[{v!r}]: {v!r} is not a choice of --{f}; fix the key")
        for where, table in self.recipe_tables():
            for k in table:
                if k not in self.flags:
                    near = difflib.get_close_matches(k, list(self.flags), n=1)
                    hint = f" (did you mean {near[0]}?)" if near else ""
                    raise UserError(f"run_sample.py {where}: {k!r} is not a flag{hint}; recipe keys must be flags "
                                    "of the sections")

    def resolve(self, args: Flags, explicit: set[str]) -> Flags:
        """Fill the flags not in ``explicit`` from the recipe tables (module doc); set ``toy`` and the default
        work_dir; suffix the method outputs."""
        if args.dataset is None:
            args.dataset = "coco14" if args.coco14_root is not None else "voc12"
        other = "coco14_root" if args.dataset == "voc12" else "voc12_root"
        if getattr(args, other) is not None:
            raise UserError(f"--{other} {getattr(args, other)}: does not fit --dataset {args.dataset}; pass "
                            f"--{args.dataset}_root instead (or --dataset {other[:-5]})")
        args.toy = getattr(args, f"{args.dataset}_root") is None
        recipe = dict(self.dataset_recipes.get(args.dataset, {}))
        recipe.update(self.method_recipes.get(args.method, {}))
        recipe.update(self.published_recipes.get((args.method, args.dataset), {}))
        for f, tables in self.choice_recipes.items():
            recipe.update(tables.get(recipe[f] if f in recipe and f not in explicit else getattr(args, f), {}))
        if args.toy:
            recipe.update(self.toy_recipe)
            recipe.update(self.toy_method_recipes.get(args.method, {}))
        for k, v in recipe.items():
            if k not in explicit:
                setattr(args, k, v)
        if args.method != self.base_method:
            for name, f in self.flags.items():
                if f.meta["output"] and name not in explicit:
                    setattr(args, name, method_output(getattr(args, name), args.method))
        if args.work_dir is None:
            toy_dir = "toy" if args.dataset == "voc12" else f"toy_{args.dataset}"
            args.work_dir = os.path.join("runs", toy_dir if args.toy else args.dataset)
        return args

    # ----- checks

    def validate(self, args: Flags, steps: Sequence[str]) -> None:
        """Check the type and the metadata rules of every flag of the sections ``steps`` read (plus run and
        data), then each such section's ``check``. UserError naming the flag on the first violation."""
        names = set(self.sections_read(steps)) | {"run", "data"}
        for f in self.flags.values():
            if f.section in names:
                _check_value(f, getattr(args, f.name))
        for cls in self.sections:
            if cls.section_name in names and hasattr(cls, "check"):
                cls(**{n: getattr(args, n) for n in self.section_flags(cls.section_name)}).check(args)

    # ----- docs

    def overrides(self, name: str) -> list[str]:
        """Where a flag's default is replaced: 'table: value' for every recipe table that sets it, and the
        method-output rule."""
        out = [f"--dataset {d}: {fmt(t[name])}" for d, t in self.dataset_recipes.items() if name in t]
        out += [f"--method {m}: {fmt(t[name])}" for m, t in self.method_recipes.items() if name in t]
        out += [f"{m} on {d}: {fmt(t[name])}" for (m, d), t in self.published_recipes.items() if name in t]
        out += [f"--{f} {v}: {fmt(t[name])}" for f, tables in self.choice_recipes.items() for v, t in tables.items()
                if name in t]
        if name in self.toy_recipe:
            out.append(f"toy: {fmt(self.toy_recipe[name])}")
        out += [f"{m} toy: {fmt(t[name])}" for m, t in self.toy_method_recipes.items() if name in t]
        if self.flags[name].meta["output"]:
            out += [f"--method {m}: {method_output(self.default(name), m)}" for m in self.pipelines
                    if m != self.base_method]
        return out

    def markdown(self) -> str:
        """The flags page (docs/flags.md): one table per section with each flag's default, the recipe
        overrides and the help; which steps read the section."""
        lines = ["# Flags", "",
                 "Generated from `run_sample.py` by `python -m misc.config --markdown > docs/flags.md`; do not edit "
                 "(a test fails when it is stale).", "",
                 "Every step reads the flags of the sections it declares (`SECTIONS` in `step/<name>.py`). A flag "
                 "not typed on the command line takes its default, replaced in this order (a later one wins) by "
                 "`DATASET_RECIPES[--dataset]`, `METHOD_RECIPES[--method]`, `PUBLISHED_RECIPES[(--method, "
                 "--dataset)]` and, on the toy dataset (no dataset root given), `TOY_RECIPE` then "
                 f"`TOY_METHOD_RECIPES[--method]`. Method outputs get a `_<method>` suffix for every method but "
                 f"{self.base_method}. `python run_sample.py --method M --help` lists the flags of M's pipeline.", "",
                 "## Pipelines", "", "| method | steps |", "|---|---|"]
        lines += [f"| {m} | {' → '.join(p)} |" for m, p in self.pipelines.items()]
        lines += ["", "`--<step>_pass False` skips a step of the chosen method's pipeline (default True); a `_pass` "
                  "flag of a step outside it is an error."]
        for flag_name in dict.fromkeys(self.optional_steps.values()):
            lines += ["", f"{', '.join(s for s, f in self.optional_steps.items() if f == flag_name)} run only with "
                      f"`--{flag_name} True`."]
        lines += [""]
        for cls in self.sections:
            name = cls.section_name
            readers = [s for s in self.steps if name in self.step_sections(s)]
            doc = [ln.strip() for ln in (cls.__doc__ or "").strip().splitlines()]
            lines += [f"## {doc[0]} (`{name}`)", ""]
            if len(doc) > 1 and " ".join(doc[1:]).strip():
                lines += [" ".join(d for d in doc[1:] if d), ""]
            lines += [f"Read by: {', '.join(readers)}.", "", "| flag | default | overrides | help |",
                      "|---|---|---|---|"]
            for f in (f for f in self.flags.values() if f.section == name):
                default = f.meta["shown"] or fmt(f.default)
                cell = "<br>".join(self.overrides(f.name))
                help_ = f.meta["help"].replace("|", "\\|")
                if f.meta["choices"]:
                    help_ += f" (one of: {', '.join(map(str, f.meta['choices']))})"
                lines.append(f"| `--{f.name}` | `{default}` | {cell} | {help_} |")
            lines.append("")
        return "\n".join(lines)


def method_output(value: str | None, method: str) -> str | None:
    """The method's name for an output: ``_<method>`` before the file extension (cam -> cam_rib,
    sess/res50_irn.pth -> sess/res50_irn_rib.pth); None stays None."""
    if value is None:
        return None
    p = PurePosixPath(value)
    return str(p.with_name(f"{p.stem}_{method}{p.suffix}"))


def flags_in(args: Flags, sections: Sequence[str]) -> dict[str, Any]:
    """{flag: value} of the flags of ``sections`` in ``args``."""
    return {n: getattr(args, n) for s in sections for n in args.config.section_flags(s)}


def _check_value(f: Flag, v: Any) -> None:
    """Type and metadata rules of one flag's value; UserError naming the flag."""
    where = f"--{f.name} {fmt(v)}"
    if v is None:
        if not f.optional:
            raise UserError(f"{where}: a value is required")
        return
    items = v if f.count is not None else (v,)
    if f.count is not None and (not isinstance(v, (tuple, list)) or (f.count == "+" and not v)
                                or (f.count != "+" and len(v) != f.count)):
        n = "one or more values" if f.count == "+" else f"{f.count} values"
        raise UserError(f"{where}: expected {n}")
    for x in items:
        ok = (isinstance(x, bool) if f.scalar is bool else isinstance(x, (int, float)) and not isinstance(x, bool)
              if f.scalar is float else isinstance(x, int) and not isinstance(x, bool) if f.scalar is int
              else isinstance(x, f.scalar))
        if not ok:
            raise UserError(f"{where}: expected {f.scalar.__name__} values")
    m = f.meta
    if m["choices"] and v not in m["choices"]:
        raise UserError(f"{where}: must be one of {', '.join(map(str, m['choices']))}")
    for x in items:
        if m["minimum"] is not None and x < m["minimum"]:
            raise UserError(f"{where}: must be at least {m['minimum']}")
        if m["maximum"] is not None and x > m["maximum"]:
            raise UserError(f"{where}: must be at most {m['maximum']}")
        if m["above"] is not None and x <= m["above"]:
            raise UserError(f"{where}: must be above {m['above']}")
        if m["multiple_of"] and x % m["multiple_of"]:
            k = m["multiple_of"]
            raise UserError(f"{where}: must be a multiple of {k} (e.g. {x // k * k or k} or {(x // k + 1) * k})")
    if m["ordered"] and v[0] > v[1]:
        raise UserError(f"{where}: LO must not exceed HI")
    if m["sweep"] and (v[2] <= 0 or v[1] < v[0]):
        raise UserError(f"{where}: need LO <= HI and STEP > 0")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m misc.config --markdown``: print the flags page of run_sample.py's CONFIG."""
    p = argparse.ArgumentParser(description="Print the flags page generated from run_sample.py's sections.")
    p.add_argument("--markdown", action="store_true", required=True, help="print docs/flags.md")
    p.parse_args(argv)
    print(importlib.import_module("run_sample").CONFIG.markdown(), end="")


if __name__ == "__main__":
    main()
