"""YAML recipes: a model source, a dataset and an ordered list of stages, validated all at once.

A recipe::

    model: {zoo: mlp, args: {hidden: [512, 512]}}
    data: {name: digits}
    stages:
      - train: {epochs: 30, lr: 0.05}
      - distill:
          student: {zoo: mlp, args: {hidden: [128]}}
          losses: [{type: KD, temperature: 4.0}]
          train: {epochs: 40}
      - prune: {type: Magnitude, sparsity: 0.5, finetune: {epochs: 10, lr: 0.01}}
      - quantize: {type: Int8Static, observer: percentile}

Every stage's options are parsed into the stage's options class and the technique's own config class
(``Magnitude``, ``Int8Static``, ...). Validation never stops at the first problem: every problem is
collected with its path in the file (``stages[2].prune.sparsity: 1.5 is not in [0.0, 1.0)``) and
:class:`RecipeError` lists them all. Malformed YAML reports its line and column; unknown stages list
the valid ones; a stage that cannot take the model the previous stages leave (``share`` after
``quantize``) explains the allowed order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimtorch.core.config import Config, parse_config
from slimtorch.core.config import describe as _kind
from slimtorch.core.config import key_list as _names
from slimtorch.core.errors import SlimtorchError
from slimtorch.pipeline.options import DataSpec, MeasureOptions, ModelSource
from slimtorch.pipeline.stage_def import ALLOWED_ORDER, DENSE, get_stage, stage_names

TOP_LEVEL_KEYS = ("name", "model", "data", "stages", "seed", "measure")


class RecipeError(SlimtorchError):
    """A recipe that cannot run; ``problems`` holds every problem found, each with its path in the file."""

    def __init__(self, problems: list[str], source: str = "recipe") -> None:
        self.problems = list(problems)
        self.source = source
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in {source}:"
        super().__init__("\n  - ".join([head, *self.problems]))


@dataclass
class StageSpec:
    """One validated stage of a recipe.

    Attributes:
        name: the stage kind (``prune``).
        index: position in ``stages`` (0-based).
        options: the stage's own options (e.g. ``PruneOptions(finetune=...)``).
        technique: the technique's config (``Magnitude(...)``), or ``None`` for stages without one.
    """

    name: str
    index: int
    options: Config
    technique: Config | None = None
    label: str | None = None

    @property
    def path(self) -> str:
        """``stages[i].<name>``, the prefix of this stage's error messages."""
        return f"stages[{self.index}].{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data that parses back to this stage (``{name: {type, technique fields, option fields}}``)."""
        body: dict[str, Any] = {"label": self.label} if self.label else {}
        if self.technique is not None:
            body["type"] = type(self.technique).__name__
            body.update(plain_config(self.technique))
        body.update(plain_config(self.options))
        return {self.name: body}


@dataclass
class Recipe:
    """A validated recipe (see the module docstring)."""

    model: ModelSource
    data: DataSpec
    stages: list[StageSpec]
    seed: int = 0
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    name: str = ""
    base_dir: Path = field(default_factory=Path.cwd)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :func:`parse_recipe` turns back into an equal recipe."""
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        out.update(
            {
                "model": plain_config(self.model),
                "data": plain_config(self.data),
                "seed": self.seed,
                "measure": plain_config(self.measure),
                "stages": [s.to_dict() for s in self.stages],
            }
        )
        return out

    def to_yaml(self) -> str:
        """The recipe as YAML text."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def resolve(self, path: str | None) -> Path | None:
        """A path from the recipe, relative to the recipe file's folder."""
        if path is None:
            return None
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def stage_fingerprint(self, index: int) -> str:
        """Hash of everything stage ``index``'s output depends on (model, data, seed, stages up to it)."""
        d = self.to_dict()
        key = {"model": d["model"], "data": d["data"], "seed": self.seed, "stages": d["stages"][: index + 1]}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plain_config(cfg: Config) -> dict[str, Any]:
    """``cfg.to_dict()`` without callables (``filter_fn``) and without fields left at their default.

    Nested configs keep their ``type``; the result parses back to an equal config.
    """
    out = {}
    plain = cfg.to_dict()
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        value = getattr(cfg, f.name)
        if callable(value) and not isinstance(value, Config):
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if default is not dataclasses.MISSING and _same(value, default):
            continue
        out[f.name] = plain[f.name]
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001 - values whose == is not a bool (tensors) count as different
        return False


# ---- loading -------------------------------------------------------------------------------------
def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe file (relative paths in it are relative to its folder).

    The file is read with :func:`slimtorch.core.safe_yaml.load_yaml`: at most 1 MiB, no anchors or aliases.
    Parsing imports nothing: a ``factory`` is only checked to look like ``package.module:function``; it runs
    in :func:`~slimtorch.pipeline.run_recipe` and only with ``allow_code=True`` (:func:`require_recipe_consent`).

    Raises:
        RecipeError: listing every problem (YAML syntax errors with line and column).
    """
    from slimtorch.core.safe_yaml import MAX_YAML_BYTES

    p = Path(path)
    if not p.is_file():
        raise RecipeError([f"no recipe file at {p}"], str(p))
    try:
        size = p.stat().st_size
        if size > MAX_YAML_BYTES:  # refused before reading: a recipe is a few KB at most
            raise RecipeError([f"the file is {size} bytes; a recipe is limited to {MAX_YAML_BYTES} bytes"], str(p))
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError([f"cannot read {p}: {e}"], str(p)) from None
    return parse_recipe_text(text, source=str(p), base_dir=p.resolve().parent)


def parse_recipe_text(text: str, source: str = "recipe", base_dir: str | Path | None = None) -> Recipe:
    """Validate a recipe given as YAML text (see :func:`load_recipe`)."""
    from slimtorch.core.safe_yaml import YAMLRefused, load_yaml

    try:
        data = load_yaml(text, source="the recipe")
    except YAMLRefused as e:
        raise RecipeError([str(e).removeprefix("the recipe: ")], source) from None
    return parse_recipe(data, source, base_dir)


def parse_recipe(data: Any, source: str = "recipe", base_dir: str | Path | None = None) -> Recipe:
    """Validate a recipe given as plain data (what ``yaml.safe_load`` returns).

    Raises:
        RecipeError: listing every problem found.
    """
    problems: list[str] = []
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if not isinstance(data, dict):
        raise RecipeError([f"a recipe is a mapping with keys {list(TOP_LEVEL_KEYS)}, got {_kind(data)}"], source)
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    if unknown:
        problems.append(f"unknown top-level key(s) {_names(unknown)}; allowed: {list(TOP_LEVEL_KEYS)}")

    model = None
    if "model" not in data:
        problems.append("model: missing (e.g. model: {zoo: mlp} or model: {factory: 'mypkg.nets:build'})")
    else:
        model = parse_config(ModelSource, data["model"], "model", problems)
        if model is not None:
            _check_checkpoint(model, "model", base, problems)
    data_spec = parse_config(DataSpec, data.get("data", {}), "data", problems)
    measure = parse_config(MeasureOptions, data.get("measure", {}), "measure", problems)
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        problems.append(f"seed must be a non-negative integer, got {seed!r}")
    name = data.get("name", "")
    if not isinstance(name, str):
        problems.append(f"name must be a string, got {_kind(name)}")

    stages = _parse_stages(data.get("stages"), base, problems)
    if stages:
        _check_order(stages, problems)
    if problems:
        raise RecipeError(problems, source)
    if model is None or data_spec is None or measure is None:  # every parse failure appended a problem
        raise RecipeError(["recipe could not be parsed"], source)
    return Recipe(model=model, data=data_spec, stages=stages, seed=seed, measure=measure, name=name, base_dir=base)


def _parse_stages(raw: Any, base: Path, problems: list[str]) -> list[StageSpec]:
    if raw is None:
        problems.append("stages: missing; give a list such as [{train: {epochs: 10}}, {evaluate: {}}]")
        return []
    if not isinstance(raw, list) or not raw:
        problems.append(f"stages must be a non-empty list of {{stage: options}} items, got {_kind(raw)}")
        return []
    valid = stage_names()
    out: list[StageSpec] = []
    ok = True
    for i, item in enumerate(raw):
        where = f"stages[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            problems.append(
                f"{where}: expected one {{stage: options}} mapping (e.g. {{prune: {{sparsity: 0.5}}}}), "
                f"got {_kind(item)}"
            )
            ok = False
            continue
        ((name, body),) = item.items()
        if not isinstance(name, str) or name.lower() not in valid:
            problems.append(f"{where}: unknown stage {name!r}; valid stages: {', '.join(valid)}")
            ok = False
            continue
        spec = parse_stage(name.lower(), i, body, problems, base)
        if spec is None:
            ok = False
        else:
            out.append(spec)
    return out if ok else []


def parse_stage(name: str, index: int, body: Any, problems: list[str], base: Path | None = None) -> StageSpec | None:
    """Parse one stage's options (``body``) into a :class:`StageSpec`, appending problems to ``problems``."""
    stage = get_stage(name)
    path = f"stages[{index}].{name}"
    if body is None:
        body = {}
    if not isinstance(body, dict):
        problems.append(f"{path}: options must be a mapping, got {_kind(body)}")
        return None
    n_before = len(problems)
    body = dict(body)
    label = body.pop("label", None)
    if label is not None and (not isinstance(label, str) or not label.strip()):
        problems.append(f"{path}.label must be a non-empty string (the stage's name in the report), got {_kind(label)}")
    own_fields = {f.name for f in dataclasses.fields(stage.options)}  # type: ignore[arg-type]
    own = {k: v for k, v in body.items() if k in own_fields}
    rest = {k: v for k, v in body.items() if k not in own_fields}
    technique = None
    if stage.techniques is None:
        options = parse_config(stage.options, body, path, problems, extra_allowed=())
    else:
        options = parse_config(stage.options, own, path, problems)
        kinds = stage.techniques()
        type_name = rest.pop("type", stage.default_technique)
        if not isinstance(type_name, str) or type_name not in kinds:
            problems.append(f"{path}.type: {type_name!r} is not one of {sorted(kinds)}")
        else:
            technique = parse_config(kinds[type_name], rest, path, problems, extra_allowed=sorted(own_fields))
    if options is not None and base is not None:
        for f in dataclasses.fields(options):  # type: ignore[arg-type]
            v = getattr(options, f.name)
            if isinstance(v, ModelSource):
                _check_checkpoint(v, f"{path}.{f.name}", base, problems)
    if len(problems) > n_before or options is None:
        return None
    return StageSpec(name=name, index=index, options=options, technique=technique, label=label)


def _check_order(stages: list[StageSpec], problems: list[str]) -> None:
    state, last = DENSE, None
    for spec in stages:
        stage = get_stage(spec.name)
        if state not in stage.accepts:
            after = f"after {last.path}" if last is not None else "here"
            problems.append(
                f"{spec.path} cannot run {after}: it needs a model that is "
                f"{' or '.join(sorted(stage.accepts))}, "
                f"but the stages before leave it {state}. Allowed order: {ALLOWED_ORDER}"
            )
            return
        new = stage.produces(spec, state)
        if new != state:
            last = spec
        state = new


def _check_checkpoint(src: ModelSource, path: str, base: Path, problems: list[str]) -> None:
    if src.checkpoint is None:
        return
    p = Path(src.checkpoint).expanduser()
    p = p if p.is_absolute() else base / p
    if not (p.is_file() or (p / "model.safetensors").is_file()):
        problems.append(
            f"{path}.checkpoint: no model at {src.checkpoint!r} (looked for {p}); give a run folder "
            "or a .safetensors file written by slimtorch.save"
        )


# ---- code consent ----------------------------------------------------------------------------------
def code_references(recipe: Recipe) -> list[tuple[str, str]]:
    """Every Python callable the recipe names, as ``(path in the recipe, "module:function")``.

    Looks at the recipe's model and at every model source inside stage options (a distillation
    ``student`` or ``teacher``, a joint stage's ``student``), however deeply nested.
    """
    refs: list[tuple[str, str]] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, ModelSource):
            if value.factory is not None:
                refs.append((f"{path}.factory", value.factory))
            return
        if isinstance(value, Config):
            for f in dataclasses.fields(value):  # type: ignore[arg-type]
                walk(getattr(value, f.name), f"{path}.{f.name}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")

    walk(recipe.model, "model")
    for spec in recipe.stages:
        walk(spec.options, spec.path)
    return refs


def require_recipe_consent(recipe: Recipe, allow_code: bool, source: str = "the recipe") -> None:
    """Refuse a recipe that names Python code unless ``allow_code`` (``--allow-code``) is given.

    Called before anything of the recipe is built or imported, so without consent no code of it runs.

    Raises:
        CodeConsentError: naming every ``factory`` of the recipe and how to consent.
    """
    from slimtorch.core.consent import CodeConsentError

    refs = code_references(recipe)
    if refs and not allow_code:
        named = ", ".join(f"{path} {ref!r}" for path, ref in refs)
        raise CodeConsentError(
            f"{source} runs code: {named} would be imported and called. slimtorch runs code only with your "
            "consent: pass --allow-code (API: allow_code=True) if you trust this recipe and that code"
        )
