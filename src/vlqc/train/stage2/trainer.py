"""The Stage-2 AB trainer: ms-swift's `Seq2SeqTrainer` with a second channel learned from the model's own
rollouts (docs/stage2.md).

Contract:
- Every optimizer step runs one channel for its whole accumulation window, chosen from the step number and
  `b_ratio` alone (`is_channel_b`): no state, the same on every rank and in every rerun.
- Channel A is SFT: the dense rows' teacher-forced loss, untouched.
- Channel B replaces each row of the window before the loss is computed: a greedy rollout of the row's dense
  answer from the current weights (the row's own prompt tokens and pixels, seeded), then
  `vlqc.train.stage2.sequence.build_channel_b` on the rollout's own token ids against the ground truth read
  from the row's target. A row the builder cannot use trains as channel A and is counted under its reason.
  The loss of the window is normalised by its new label tokens (HF's `num_items_in_batch`), as SFT's is.
- Logged on B steps only: `time/rollout_generate_s`, `time/rollout_build_s`, `rollout/gen_tokens_per_s`,
  `rollout/gen_tokens_mean`, `rollout/parse_truncated_rate`, `rollout/match_precision`,
  `rollout/match_recall`, `rollout/fallback_rate`, `rollout/fallbacks/<reason>` (counts); on every step
  `stage2_ab/b_ratio_realized` (B steps so far over steps so far), `stage2_ab/channel_b` (1 on a B step)
  and, with dumps on, the dump writer's counts `stage2_ab/dumps_*`.

Settings come from $VLQC_STAGE2_AB (the run's resolved `stage2_ab` section and its dump folder), written by
`vlqc.train.run`; `vlqc.train.stage2.main` points ms-swift at this class.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from fractions import Fraction
from typing import Any

import torch
from swift.trainers import Seq2SeqTrainer
from transformers import GenerationConfig

from vlqc.errors import VlqcError
from vlqc.inference.answers import AnswerError, parse_dense
from vlqc.train.stage2.dump import RolloutDumpWriter, rollout_record
from vlqc.train.stage2.sequence import FallBack, build_channel_b

ENV = "VLQC_STAGE2_AB"
IGNORE = -100
FALLBACKS = "rollout/fallbacks/"  # + reason: rows of the B steps since the last log that trained as A


def is_channel_b(step: int, b_ratio: float) -> bool:
    """Whether optimizer step `step` (0-based) is a channel-B step: the B steps are spread so that after every
    step the count of B steps is floor(steps × b_ratio) (exact, in fractions)."""
    ratio = Fraction(str(b_ratio))
    return (step + 1) * ratio // 1 > step * ratio // 1


def settings_from_env() -> dict[str, Any]:
    text = os.environ.get(ENV)
    if not text:
        raise VlqcError(f"${ENV} is not set: a Stage-2 AB run is launched by vlqc.train.run with its settings")
    return json.loads(text)


class Stage2ABTrainer(Seq2SeqTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage2 = settings_from_env()
        self.steps_run = {"a": 0, "b": 0}
        self.pending: dict[str, list[float]] = defaultdict(list)
        self.last_channel_b = False
        self.dumps = None
        dump = self.stage2["dump"]
        if dump["every"]:
            self.dumps = RolloutDumpWriter(
                self.stage2["dump_dir"],
                rank=self.args.process_index,
                **{key: dump[key] for key in ("max_chars", "queue_size", "min_free_mb")},
            )

    # --- the channel of each window -------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batches:
            return batches, num_items
        step = self.state.global_step
        self.last_channel_b = is_channel_b(step, self.stage2["b_ratio"])
        self.steps_run["b" if self.last_channel_b else "a"] += 1
        if not self.last_channel_b:
            return batches, num_items
        b_step = self.steps_run["b"]
        batches = [self.channel_b(batch, step, dump=self._dump_due(b_step)) for batch in batches]
        return batches, self._get_num_items_in_batch(batches, device)

    def _dump_due(self, b_step: int) -> bool:
        return self.dumps is not None and b_step % self.stage2["dump"]["every"] == 0

    # --- channel B ------------------------------------------------------------------------------------

    def channel_b(self, batch: dict[str, Any], step: int, *, dump: bool) -> dict[str, Any]:
        rows = split_rows(batch)
        for i, row in enumerate(rows):
            # ms-swift keeps no row ids in a batch: a rollout is named by where it ran.
            row["sample_id"] = f"step{step}.rank{self.args.process_index}.row{i}"
        rollout = self.stage2["rollout"]
        started = time.perf_counter()
        generated = self.rollouts(rows, seed=rollout["seed"] + step, max_new_tokens=rollout["max_new_tokens"])
        generated_at = time.perf_counter()
        built_rows, stats = [], defaultdict(float)
        for row, tokens in zip(rows, generated):
            built_rows.append(self.build_row(row, tokens, stats, step, dump))
        self.pending["time/rollout_generate_s"].append(generated_at - started)
        self.pending["time/rollout_build_s"].append(time.perf_counter() - generated_at)
        gen_tokens = sum(len(t) for t in generated)
        self.pending["rollout/gen_tokens_per_s"].append(gen_tokens / max(generated_at - started, 1e-9))
        self.pending["rollout/gen_tokens_mean"].append(gen_tokens / len(rows))
        self.pending["rollout/fallback_rate"].append(stats["fallback"] / len(rows))
        built = len(rows) - stats["fallback"]
        if built:
            self.pending["rollout/parse_truncated_rate"].append(stats["truncated"] / built)
        if stats["pred"]:
            self.pending["rollout/match_precision"].append(stats["matched"] / stats["pred"])
        if stats["gt"]:
            self.pending["rollout/match_recall"].append(stats["matched"] / stats["gt"])
        return self.template.data_collator(built_rows)

    @contextmanager
    def rollout_mode(self):
        """Generation as inference: eval mode (no dropout), no gradients, and the template's training-time
        input hook off (it turns ids into embeddings for the training forward)."""
        model, mode, training = self.model, self.template.mode, self.model.training
        model.eval()
        self.template.set_mode("transformers")
        try:
            with torch.no_grad():
                yield model
        finally:
            self.template.set_mode(mode)
            model.train(training)

    def rollouts(self, rows: list[dict[str, Any]], *, seed: int, max_new_tokens: int) -> list[list[int]]:
        """Greedy answers to the rows' prompts, one generate call for the batch (prompts padded left)."""
        tokenizer = self.template.tokenizer
        prompts = [row["prompt_ids"] for row in rows]
        width = max(len(p) for p in prompts)
        device = rows[0]["pixel_values"].device
        ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt) :] = torch.tensor(prompt, device=device)
            mask[i, width - len(prompt) :] = 1
        stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
        )
        torch.manual_seed(seed)
        with self.rollout_mode() as model:
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                pixel_values=torch.cat([row["pixel_values"] for row in rows]),
                image_grid_thw=torch.cat([row["image_grid_thw"] for row in rows]),
                generation_config=config,
            )
        answers = []
        for tokens in out[:, width:].tolist():
            # The first stop ends the answer (kept: the builder reads it); padding after it is not the model's.
            end = next((i + 1 for i, t in enumerate(tokens) if t in stops), len(tokens))
            answers.append(tokens[:end])
        return answers

    def build_row(self, row: dict[str, Any], rollout: list[int], stats: dict, step: int, dump: bool) -> dict:
        """The row's channel-B encoding, or its own (channel A) when the builder falls back."""
        own = {k: row[k] for k in ("input_ids", "labels", "pixel_values", "image_grid_thw")}
        tokenizer = self.template.tokenizer
        answer, suffix = split_suffix(row["answer_ids"], tokenizer)
        try:
            truth = parse_dense(tokenizer.decode(answer, skip_special_tokens=False))
        except AnswerError as exc:
            result: Any = FallBack("not_dense", str(exc), tokenizer.decode(rollout, skip_special_tokens=False))
            truth = None
        else:
            matching = self.stage2["matching"]
            result = build_channel_b(
                row["prompt_ids"],
                rollout,
                truth,
                tokenizer,
                iou_threshold=matching["iou_threshold"],
                line_threshold=matching["line_threshold"],
                suffix_ids=suffix,
            )
        if isinstance(result, FallBack):
            stats["fallback"] += 1
            self.pending[f"{FALLBACKS}{result.reason}"].append(1.0)
        else:
            s = result.stats
            stats["pred"] += s.pred
            stats["gt"] += s.gt
            stats["matched"] += s.matched
            stats["truncated"] += s.truncated
            own.update(input_ids=result.input_ids, labels=result.labels)
        if dump:
            self.dumps.submit(self.dump_record(row, rollout, result, truth, step))
        return own

    def dump_record(self, row: dict, rollout: list[int], result: Any, truth: Any, step: int) -> dict[str, Any]:
        image_token = self.model.config.image_token_id
        prompt = [t for t in row["prompt_ids"] if t != image_token]  # the image's hundreds of pad tokens
        built = not isinstance(result, FallBack)
        return rollout_record(
            step=step,
            sample_id=row["sample_id"],
            prompt=self.template.tokenizer.decode(prompt, skip_special_tokens=False),
            rollout=result.rollout_text,
            answer=parse_dense(result.rollout_text, strict=False),
            gt=truth.objects if truth is not None else (),
            matching=result.matching if built else None,
            rollout_tokens=len(rollout),
            truncated=result.stats.truncated if built else None,
        )

    # --- logs -----------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.model.training and "loss" in logs:
            done = self.steps_run["a"] + self.steps_run["b"]
            logs["stage2_ab/b_ratio_realized"] = self.steps_run["b"] / done if done else 0.0
            logs["stage2_ab/channel_b"] = float(self.last_channel_b)
            for key, values in self.pending.items():
                logs[key] = sum(values) if key.startswith(FALLBACKS) else sum(values) / len(values)  # counts, means
            self.pending.clear()
            if self.dumps is not None:
                logs.update({f"stage2_ab/dumps_{k}": v for k, v in self.dumps.counts().items()})
        super().log(logs, *args, **kwargs)

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.dumps is not None:
                self.dumps.close()


def split_rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a collated batch (one image a row): each row's unpadded ids and labels, its
    prompt (the ids before the first label), its answer (the labelled ids) and its image's patches."""
    grids = batch["image_grid_thw"]
    count = batch["input_ids"].shape[0]
    if grids.shape[0] != count:
        raise VlqcError(f"Stage-2 channel B needs one image a row; this batch has {grids.shape[0]} for {count} rows")
    patches = grids.prod(dim=-1).tolist()
    pixels = torch.split(batch["pixel_values"], patches)
    rows = []
    for i in range(count):
        real = batch["attention_mask"][i].bool()  # padding on either side (training.padding_side)
        ids = batch["input_ids"][i][real].tolist()
        labels = batch["labels"][i][real].tolist()
        labelled = [j for j, label in enumerate(labels) if label != IGNORE]
        if not labelled:
            raise VlqcError(f"row {i} of a Stage-2 batch has no labelled answer")
        first, last = labelled[0], labelled[-1] + 1
        rows.append(
            {
                "input_ids": ids,
                "labels": labels,
                "prompt_ids": ids[:first],
                "answer_ids": ids[first:last],
                "pixel_values": pixels[i],
                "image_grid_thw": grids[i : i + 1],
            }
        )
    return rows


def split_suffix(answer_ids: list[int], tokenizer) -> tuple[list[int], list[int]]:
    """The answer's text tokens and the template's closing tokens after them (`<|im_end|>` …): every token
    after the last one that is not special or whitespace."""
    special = set(tokenizer.all_special_ids)
    end = len(answer_ids)
    while end and (answer_ids[end - 1] in special or not tokenizer.decode(answer_ids[end - 1 : end]).strip()):
        end -= 1
    return answer_ids[:end], answer_ids[end:]
