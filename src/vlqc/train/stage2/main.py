"""torchrun entry of a Stage-2 AB run: `swift sft` with its arguments, its trainer swapped for
`vlqc.train.stage2.trainer.Stage2ABTrainer` (docs/stage2.md). `vlqc.train.run` launches it in place of
`swift.cli.sft`, so everything else (data, tuner, checkpoints, logging.jsonl) is ms-swift's own."""

from __future__ import annotations


def main() -> None:
    from swift.cli.utils import try_use_single_device_mode
    from swift.pipelines import sft_main
    from swift.trainers import TrainerFactory

    try_use_single_device_mode()
    # ms-swift picks its trainer class by task type from this table (by import path).
    TrainerFactory.TRAINER_MAPPING = {
        **TrainerFactory.TRAINER_MAPPING,
        "causal_lm": "vlqc.train.stage2.trainer.Stage2ABTrainer",
    }
    sft_main()


if __name__ == "__main__":
    main()
