"""Reusable, named, removable forward hooks on a diffusers UNet.

Two pieces are shared by activation collection, concept scoring and enforcement:
- `TimestepReader`: a forward *pre*-hook on the UNet that reads the UNet's own `timestep`
  argument on every call. Keying by this value (not by counting calls) survives a different
  scheduler, step count, guidance setting or a second-order scheduler (SAEURON.md section 4).
- `resolve_hook_point`: dotted module path relative to the UNet -> module, with a one-line
  error that lists the valid candidates.

Hooks are named: registering a name that is already taken on a module is an error (two
features must never silently replace each other's hook), and `remove_hooks` removes by name or
prefix. Callers remove them in `finally`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from governance.common.errors import GovernanceError

_HANDLES_ATTR = "_saegov_hook_handles"

# Module classes whose output is a 4-D [B, C, H, W] map (Transformer2DModel: a 1-tuple of it).
HOOKABLE_CLASSES = ("Transformer2DModel", "ResnetBlock2D")


class HookPointError(GovernanceError):
    """A hook point that does not exist or does not produce a 4-D map."""


class HookNameTaken(GovernanceError):
    """A hook registered under a name another hook on that module already has."""


def _handles(module: nn.Module) -> dict[str, Any]:
    handles = module.__dict__.get(_HANDLES_ATTR)
    if handles is None:
        handles = {}
        # Plain attribute via __dict__ so nn.Module does not register it as a submodule/buffer.
        module.__dict__[_HANDLES_ATTR] = handles
    return handles


def add_named_hook(
    module: nn.Module, name: str, fn: Callable[..., Any], *, pre: bool = False, with_kwargs: bool = False
) -> Any:
    """Attach `fn` as a forward (or pre-forward) hook under `name`; refused if the name is taken.
    Returns the handle: `remove_named_hook` with it removes this hook and never a later one."""
    if name in _handles(module):
        raise HookNameTaken(f"a hook named {name!r} is already registered on {type(module).__name__}; remove it first")
    if pre:
        handle = module.register_forward_pre_hook(fn, with_kwargs=with_kwargs)
    else:
        handle = module.register_forward_hook(fn, with_kwargs=with_kwargs)
    _handles(module)[name] = handle
    return handle


def has_named_hook(module: nn.Module, name: str, handle: Any) -> bool:
    """Whether `handle` is the hook registered under `name` (still attached)."""
    return _handles(module).get(name) is handle


def remove_named_hook(module: nn.Module, name: str, handle: Any) -> None:
    """Remove the hook `handle` (its name is freed only if it still holds it)."""
    if _handles(module).get(name) is handle:
        _handles(module).pop(name)
    handle.remove()


def block_channels(module: nn.Module) -> int | None:
    """The channels a hookable block outputs (Transformer2DModel, ResnetBlock2D), when it says."""
    for attr in ("out_channels", "in_channels"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


def remove_hooks(module: nn.Module, name: str | None = None, *, prefix: str | None = None) -> int:
    """Remove the hook `name`, or every hook whose name starts with `prefix`; returns the count."""
    handles = _handles(module)
    names = [n for n in handles if (name is not None and n == name) or (prefix is not None and n.startswith(prefix))]
    for n in names:
        handles.pop(n).remove()
    return len(names)


def hook_names(module: nn.Module) -> list[str]:
    return sorted(_handles(module))


def hook_point_candidates(unet: nn.Module) -> list[str]:
    return [n for n, m in unet.named_modules() if type(m).__name__ in HOOKABLE_CLASSES]


def resolve_hook_point(unet: nn.Module, path: str) -> nn.Module:
    """The module at dotted `path` under the UNet, if it is a block with a 4-D output."""
    candidates = hook_point_candidates(unet)
    try:
        module = unet.get_submodule(path) if path else None
    except AttributeError:
        module = None
    if module is None or type(module).__name__ not in HOOKABLE_CLASSES:
        what = "does not exist" if module is None else f"is a {type(module).__name__}, not a block with a 4-D output"
        raise HookPointError(f"hook point {path!r} {what}; valid: {', '.join(candidates)}")
    return module


def block_output_map(output: Any) -> torch.Tensor:
    """The [B, C, H, W] tensor of a block's output (diffusers' Transformer2DModel returns a 1-tuple)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    elif hasattr(output, "sample"):  # return_dict=True outputs
        output = output.sample
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise HookPointError(f"hooked block output is not a 4-D map (got {shape})")
    return output


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B*H*W, C], row-major over (b, h, w)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b * h * w, c)


def from_tokens(tokens: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `to_tokens`."""
    return tokens.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def read_timestep(args: tuple[Any, ...], kwargs: dict[str, Any], batch: int) -> torch.Tensor:
    """The UNet call's timestep as an int64 tensor of one value per sample.

    UNet2DConditionModel.forward(sample, timestep, encoder_hidden_states, ...): the timestep may
    be positional or keyword, a Python number, a 0-d tensor or a per-sample tensor.
    """
    if "timestep" in kwargs:
        t = kwargs["timestep"]
    elif len(args) > 1:
        t = args[1]
    else:
        raise ValueError("UNet call without a timestep argument")
    t = torch.as_tensor(t).detach().to("cpu")
    if t.dim() == 0:
        t = t.expand(batch)
    t = t.reshape(-1)
    if t.numel() == 1 and batch != 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"timestep has {t.numel()} values for a batch of {batch}")
    # Timestep values are integers for DDIM/PNDM/Euler-as-used-by-SD; round, do not truncate.
    return t.to(torch.float64).round().to(torch.int64)


class TimestepReader:
    """Holds the timestep (one value per sample) of the UNet call in progress."""

    def __init__(self, unet: nn.Module, name: str = "saegov.timestep") -> None:
        self.unet = unet
        self.name = name
        self.current: torch.Tensor | None = None
        self.calls = 0
        self._handle: Any = None

    def _hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sample = kwargs["sample"] if "sample" in kwargs else args[0]
        self.current = read_timestep(args, kwargs, int(sample.shape[0]))
        self.calls += 1
        return None

    def attach(self) -> TimestepReader:
        """Idempotent for this reader; another hook under the same name is refused."""
        if self._handle is not None and has_named_hook(self.unet, self.name, self._handle):
            return self
        self._handle = add_named_hook(self.unet, self.name, self._hook, pre=True, with_kwargs=True)
        return self

    def remove(self) -> None:
        """Remove this reader's hook (never another hook of the same name)."""
        if self._handle is not None:
            remove_named_hook(self.unet, self.name, self._handle)
        self._handle = None
        self.current = None


def conditional_half(x: torch.Tensor, n_prompts: int) -> torch.Tensor:
    """The conditional samples of a UNet batch: CFG stacks [uncond, cond]; without CFG, all of it."""
    if x.shape[0] == 2 * n_prompts:
        return x[n_prompts:]
    if x.shape[0] == n_prompts:
        return x
    raise ValueError(f"UNet batch of {x.shape[0]} does not match {n_prompts} prompts (with or without CFG)")

