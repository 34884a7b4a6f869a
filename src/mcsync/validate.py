"""`mcsync validate`: check config, mappings and sources without contacting any target.

Reads every source through its adapter and mapping exactly as a sync would (learner directory
excluded: it needs the state), builds every target from its settings (no network), and prints
what it found. Exit 0 when all is well, 1 when input problems were found, 2 on configuration errors.
"""

from __future__ import annotations

from collections import Counter
from datetime import date

from . import plugins
from .adapter import AdapterContext, RawResult
from .config import Config, plugin_settings
from .errors import ConfigError, InputProblem
from .mapping import load_mapping, to_record
from .targets.base import TargetContext

SHOW = 20


def validate(config: Config) -> int:
    print(f"configuration {config.path}: OK ({len(config.settings.sources)} sources, "
          f"targets: {', '.join(config.enabled_targets()) or 'none'})")
    errors: list[str] = []
    issuer = config.settings.institution.issuer()
    context = TargetContext(issuer=issuer, eppn_template=config.settings.institution.eppn_template,
                            dry_run=True, extra={"rio_enabled": "rio" in config.enabled_targets()})
    for name in config.enabled_targets():
        try:
            cls = plugins.load(plugins.TARGET_GROUP, name)
            settings = plugin_settings(cls.Settings, dict(config.target_table(name) or {}),
                                       config=config, key=f"targets.{name}")
            target = cls(settings, context)
            print(f"target {name}: settings OK")
            for line in getattr(target, "describe", lambda: [])():
                print(f"  {line}")
        except ConfigError as exc:
            errors.append(str(exc))
    for entry in config.settings.learners:
        try:
            cls = plugins.load(plugins.ADAPTER_GROUP, entry.adapter)
            options = plugin_settings(cls.Options, entry.all_options(), config=config, key=f"learners.{entry.name}")
            count, problems = 0, 0
            for item in cls(options, AdapterContext(entry.name, config.base_dir)).read():
                if isinstance(item, InputProblem):
                    problems += 1
                    if problems <= SHOW:
                        print(f"  problem {item}")
                else:
                    count += 1
            print(f"learners {entry.name}: {count} learners, {problems} problems")
            if problems:
                errors.append(f"learners {entry.name}: {problems} problems")
        except ConfigError as exc:
            errors.append(str(exc))
    problems_total = 0
    for source in config.settings.sources:
        try:
            mapping = load_mapping(config.resolve(source.mapping))
            cls = plugins.load(plugins.ADAPTER_GROUP, source.adapter)
            options = plugin_settings(cls.Options, source.options, config=config, key=f"sources.{source.name}.options")
            adapter = cls(options, AdapterContext(source.name, config.base_dir))
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        outcomes: Counter[str] = Counter()
        shown = 0
        for item in adapter.read():
            outcome = item if isinstance(item, InputProblem) else (
                to_record(item, mapping, issuer, None, today=date.today()) if isinstance(item, RawResult) else None)
            if isinstance(outcome, InputProblem):
                outcomes["problems"] += 1
                shown += 1
                if shown <= SHOW:
                    print(f"  problem {outcome}")
            elif outcome is None:
                outcomes["no result"] += 1
            else:
                outcomes[outcome.result.status.value] += 1
        problems_total += outcomes["problems"]
        summary = ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())) or "no rows"
        print(f"source {source.name} ({source.adapter}, mapping {mapping.path.name}: "
              f"{len(mapping.definitions)} microcredentials): {summary}")
    for error in errors:
        print(f"error: {error}")
    if errors and any("problems" not in e for e in errors):
        return 2
    return 1 if problems_total or errors else 0
