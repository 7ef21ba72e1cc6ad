"""The contract between the engine and the studio: everything both sides must agree on.

Nothing here imports torch, numpy or textual (a test checks), so the studio imports only this
package and starts instantly; the engine imports the same definitions, so the two cannot drift.

    errors.py     UsageError: the one exception for mistakes a user can fix; the command-line
                  boundary (cli_entry) and its JSON error record for the studio
    config.py     the run config: schema dataclasses, TOML in and out, --section.key=value
                  overrides, validation (ConfigError with key/value/allowed), presets, auto device
    sizing.py     sizes from a config alone: parameter shapes and counts, FLOPs, memory, plan
    sampling.py   Sampling: every sampling setting with its default and limits, defined once
    framing.py    NDJSON lines: encode/decode rules (no NaN/Infinity), LineBuffer, addresses
    events.py     every message on one base: run events (incl. paused, resumed, data_ready),
                  studio commands, and the chat requests and replies of `--serve`
    rundir.py     RunDir: a run folder's layout, "is this a run", checkpoints, best.json,
                  following metrics.jsonl, and the run summaries the studio lists
    finetune.py   the config that fine-tunes a run to chat, from presets/sft/chat.toml
    runlock.py    one writer per run folder: the flock a training run holds, and who holds it
    render.py     the shared text: numbers, durations, event lines, samples, progress, EOT

Import the module you need (`from engine.contract import events as p`); this package itself
re-exports nothing, so importing one part never loads the rest.
"""

__version__ = "0.1.0"  # of gpt-studio: engine and studio ship together
