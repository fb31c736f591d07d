"""Config sections as typed settings: each section is one frozen dataclass, built from the section by
`from_section`, which names the section and key of anything the dataclass does not take. The
defaults live in the config schema; `tests/test_settings.py` ties the dataclasses' to them.
"""

from __future__ import annotations

from dataclasses import fields


def from_section(cls, section: dict | None, name: str, *, elsewhere: tuple[str, ...] = ()):
    """An instance of the dataclass `cls` from the config section `name` (e.g. "ppo", "judges.<name>.api").

    Keys in `elsewhere` belong to other stages (e.g. `sft.pairs`, read by sft_pairs) and are left out;
    any other key `cls` has no field for is an error naming `name.key` and the keys the section takes.
    """
    values = {key: value for key, value in (section or {}).items() if key not in elsewhere}
    known = [field.name for field in fields(cls) if field.init]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(
            f"config {', '.join(f'{name}.{key}' for key in unknown)}: unknown key(s); {name} takes {sorted(known + list(elsewhere))}"
        )
    return cls(**values)
