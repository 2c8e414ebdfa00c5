"""The flag sections: what every step reads is in the sections it declares (checked on the source), every
recipe key is a flag, the layering of imports, one-line errors before any step for bad values, recipes and
_pass flags, the method-output names, --help per method, and the generated flags page."""
from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

import run_sample
from misc.errors import UserError
from net.registry import CLASSIFIERS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = run_sample.CONFIG
LIBRARY = ("step.common", "misc", "net", "voc12", "coco14")


@lru_cache(maxsize=None)
def _module(name: str) -> tuple[ast.Module, dict[str, str]]:
    """The AST of a module of the tree and its top-level ``from X import y`` names -> 'X.y'."""
    path = ROOT / (name.replace(".", "/") + ".py")
    tree = ast.parse((path if path.is_file() else path.with_suffix("") / "__init__.py").read_text())
    names = {a.asname or a.name: f"{n.module}.{a.name}" for n in tree.body if isinstance(n, ast.ImportFrom)
             for a in n.names}
    return tree, names


def _definition(qualname: str) -> tuple[str, ast.AST] | None:
    """(module, FunctionDef or ClassDef) of 'module.name' in the library or a step, else None."""
    mod, _, name = qualname.rpartition(".")
    if not mod.startswith(LIBRARY + ("step.",)):
        return None
    tree, _ = _module(mod)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return mod, node
    return None


def _reads(mod: str, fn: ast.FunctionDef, param: str, seen: frozenset = frozenset()) -> set[str]:
    """The attributes of ``param`` (the flags namespace) that ``fn`` of module ``mod`` reads, following it
    into every library function it is passed to. EpochResume reads the flags of the sections named in its
    call (and its DATA flags); vars(param) goes to net.registry, which reads its builders' flags."""
    key = (mod, fn.name, param)
    if key in seen:
        return set()
    seen = seen | {key}
    _, names = _module(mod)
    out: set[str] = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == param:
            out.add(node.attr)
        if not isinstance(node, ast.Call):
            continue
        passed = [(i, a) for i, a in enumerate(node.args) if isinstance(a, ast.Name) and a.id == param]
        passed += [(k.arg, k.value) for k in node.keywords if isinstance(k.value, ast.Name) and k.value.id == param]
        callee = node.func.id if isinstance(node.func, ast.Name) else None
        if callee == "vars" and passed:
            out |= {f for b in CLASSIFIERS.values() for f in b.flags}
            continue
        if not passed:
            continue
        qual = names.get(callee, f"{mod}.{callee}")
        if qual == "step.common.checkpoints.EpochResume":
            from step.common.checkpoints import EpochResume

            sections = ast.literal_eval(node.args[2])
            inputs = ast.literal_eval(node.args[3]) if len(node.args) > 3 else ()
            out |= {f for s in sections for f in CONFIG.section_flags(s)} | set(EpochResume.DATA) | set(inputs)
            out.add("__sections__:" + ",".join(sections))
            continue
        found = _definition(qual)
        assert found is not None, f"{mod}.{fn.name}: cannot follow {param} into {ast.unparse(node.func)}"
        cmod, target = found
        offset = 0
        if isinstance(target, ast.ClassDef):
            target = next(n for n in target.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
            offset = 1
        params = [a.arg for a in target.args.args]
        for where, _ in passed:
            out |= _reads(cmod, target, params[where + offset] if isinstance(where, int) else where, seen)
    return out


@pytest.mark.parametrize("step", CONFIG.steps)
def test_every_flag_a_step_reads_is_in_its_declared_sections(step):
    tree, _ = _module(f"step.{step}")
    run = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run")
    reads = _reads(f"step.{step}", run, run.args.args[0].arg)
    declared = CONFIG.step_sections(step)
    for marker in [r for r in reads if r.startswith("__sections__:")]:
        reads.discard(marker)
        assert set(marker.split(":")[1].split(",")) <= set(declared), (step, marker)
    known = {s.section_name for s in CONFIG.sections}
    assert set(declared) <= known, (step, set(declared) - known)
    allowed = {f for s in declared for f in CONFIG.section_flags(s)}
    allowed |= {d for d, s in CONFIG.derived.items() if s in declared}
    assert reads <= allowed, (step, sorted(reads - allowed))
    unused = [s for s in declared if not reads & (set(CONFIG.section_flags(s)) | {d for d, x in CONFIG.derived.items()
                                                                                  if x == s})]
    assert not unused, (step, unused)  # a declared section the step never reads


def test_every_recipe_key_is_a_flag_and_every_recipe_resolves():
    CONFIG.check_recipes()
    for _, table in CONFIG.recipe_tables():
        assert set(table) <= set(CONFIG.flags)
    for method in CONFIG.pipelines:
        for argv in ([], ["--voc12_root", "x"], ["--dataset", "coco14"], ["--coco14_root", "x"]):
            run_sample.parse_args(["--method", method, *argv])  # every value of every table passes the checks


def test_a_recipe_key_that_is_not_a_flag_is_one_line():
    bad = dataclasses.replace(CONFIG, method_recipes={**CONFIG.method_recipes, "rib": {"cam_out_dri": "x"}})
    with pytest.raises(UserError, match=r"METHOD_RECIPES\['rib'\]: 'cam_out_dri' is not a flag \(did you mean "
                                        r"cam_out_dir\?\)"):
        bad.parse(["--method", "irn"])
    bad = dataclasses.replace(CONFIG, toy_recipe={**CONFIG.toy_recipe, "train_cam_pass": False})
    with pytest.raises(UserError, match="TOY_RECIPE: 'train_cam_pass' is not a flag"):
        bad.parse([])


def test_imports_follow_the_layering():
    """misc imports nothing above it; net and the datasets only misc; a step only the library, never another
    step or run_sample; bench no step."""
    rules = {"misc": ("misc",), "net": ("misc", "net"), "voc12": ("misc", "voc12"), "coco14": ("misc", "coco14"),
             "step/common": ("misc", "net", "voc12", "coco14", "step.common"),
             "step": ("misc", "net", "voc12", "coco14", "step.common"),
             "bench": ("misc", "net", "voc12", "coco14", "bench", "run_sample")}
    ours = ("misc", "net", "voc12", "coco14", "step", "bench", "run_sample", "tests")
    for folder, allowed in rules.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                for m in mods:
                    if m.split(".")[0] in ours:
                        assert m.startswith(allowed), f"{path.relative_to(ROOT)} imports {m}"


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("argv,needle", [
    (["--method", "rib", "--rib_iters", "0"], "--rib_iters 0: must be at least 1"),
    (["--toy_n_train", "500"], "--toy_n_train 500: more than --toy_n_train_aug 400"),
    (["--irn_crop_size", "100"], "--irn_crop_size 100: must be a multiple of 16"),
    (["--method", "rib", "--make_cam_pass", "False"], "--make_cam_pass: make_cam is not a step of --method rib"),
    (["--cam_eval_sweep", "0.5", "0.1", "0.01"], "--cam_eval_sweep 0.5 0.1 0.01: need LO <= HI and STEP > 0"),
    (["--method", "rib", "--rib_loss_scales", "1.0", "3.0"], "--rib_loss_scales 1.0 3.0: must be among --cam_scales"),
    (["--voc12_root", "x", "--cam_resize_long", "640", "320"], "--cam_resize_long 640 320: LO must not exceed HI"),
])
def test_bad_flags_stop_before_any_step(tmp_path, argv, needle):
    work = tmp_path / "work"
    with pytest.raises(UserError, match=re.escape(needle)):
        run_sample.main(["--work_dir", str(work), "--toy_root", str(tmp_path / "toy"), *argv])
    assert not work.exists() and not (tmp_path / "toy").exists()  # no step ran, no toy was generated


def test_bad_flag_is_one_line(tmp_path):
    r = _cli("run_sample.py", "--work_dir", str(tmp_path / "work"), "--method", "rib", "--rib_iters", "0")
    assert r.returncode == 2 and r.stderr.strip() == "error: --rib_iters 0: must be at least 1", r.stderr
    assert not (tmp_path / "work").exists()


def test_bad_recipe_key_on_the_command_line_is_one_line_before_any_step(tmp_path):
    code = ("import sys, run_sample; from misc.cli import guarded; "
            "run_sample.METHOD_RECIPES['rib']['cam_out_dri'] = 'x'; guarded(lambda: run_sample.main(sys.argv[1:]))")
    r = _cli("-c", code, "--method", "rib", "--work_dir", str(tmp_path / "work"))
    assert r.returncode == 2 and "METHOD_RECIPES['rib']: 'cam_out_dri' is not a flag" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "work").exists()


def test_step_module_picks_its_method_and_checks_its_flags(tmp_path):
    args = CONFIG.parse(["--work_dir", str(tmp_path)], steps=("make_rib_cam",))
    assert args.method == "rib" and args.cam_out_dir == "cam_rib"
    with pytest.raises(UserError, match="--method irn: make_rib_cam is not one of its steps"):
        CONFIG.parse(["--method", "irn"], steps=("make_rib_cam",))
    r = _cli("-m", "step.make_rib_cam", "--work_dir", str(tmp_path / "w"), "--rib_iters", "0")
    assert r.returncode == 2 and "--rib_iters 0" in r.stderr and not (tmp_path / "w").exists()


def test_method_outputs_keep_their_names():
    irn = run_sample.parse_args(["--voc12_root", "x"])
    rib = run_sample.parse_args(["--voc12_root", "x", "--method", "rib"])
    names = ("cam_out_dir", "ir_label_out_dir", "irn_weights_name", "sem_seg_out_dir", "eval_out_dir", "draw_out_dir")
    assert [getattr(irn, n) for n in names] == ["cam", "ir_label", "sess/res50_irn.pth", "sem_seg", "eval", "draw"]
    assert [getattr(rib, n) for n in names] == ["cam_rib", "ir_label_rib", "sess/res50_irn_rib.pth", "sem_seg_rib",
                                                "eval_rib", "draw_rib"]
    assert irn.cam_weights_name == rib.cam_weights_name == "sess/res50_cam.pth"  # one classifier for both
    mine = run_sample.parse_args(["--voc12_root", "x", "--method", "rib", "--cam_out_dir", "seeds"])
    assert mine.cam_out_dir == "seeds" and mine.sem_seg_out_dir == "sem_seg_rib"  # typed flags win
    assert not rib.make_cam_pass and rib.make_rib_cam_pass and irn.make_cam_pass and not irn.make_rib_cam_pass


def test_help_lists_the_flags_of_the_method_pipeline():
    irn = CONFIG.build_parser("irn").format_help()
    rib = CONFIG.build_parser("rib").format_help()
    assert "--rib_iters" not in irn and "--make_rib_cam_pass" not in irn and "--make_cam_pass" in irn
    assert "--rib_iters" in rib and "--make_cam_pass" not in rib and "--cam_out_dir" in rib and "cam_rib" in rib
    draw = CONFIG.build_parser("irn", steps=("draw",)).format_help()
    assert "--draw_num" in draw and "--cam_num_epoches" not in draw and "--irn_batch_size" not in draw
    r = _cli("run_sample.py", "--method", "rib", "--help")  # the command line picks the method's parser
    assert r.returncode == 0 and "--rib_iters" in r.stdout and "--make_cam_pass" not in r.stdout


def test_flags_page_is_generated_from_the_parser():
    """docs/flags.md is the output of `python -m misc.config --markdown` (regenerate it when this fails)."""
    assert (ROOT / "docs" / "flags.md").read_text() == CONFIG.markdown()
