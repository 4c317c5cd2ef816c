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
- Rollouts run in the training process (`rollout.backend: hf`) or on a rollout server (`server`,
  vlqc.train.stage2.remote): the server gets the learner's LoRA adapter before the first B step after any
  optimizer step (rank 0 sends it, every rank waits), then the rows' prompts (messages and photo, found by
  the row's `channel`: its line in `rows`), and must encode them to the learner's prompt tokens.
- Logged on B steps only: `time/rollout_generate_s`, `time/rollout_build_s`, `time/rollout_sync_s` (server),
  `rollout/gen_tokens_per_s`, `rollout/gen_tokens_mean`, `rollout/parse_truncated_rate`,
  `rollout/match_precision`, `rollout/match_recall`, `rollout/fallback_rate`, `rollout/fallbacks/<reason>`
  (counts); on every step `stage2_ab/b_ratio_realized` (B steps so far over steps so far),
  `stage2_ab/channel_b` (1 on a B step) and, with dumps on, the dump writer's counts `stage2_ab/dumps_*`.

Settings come from $VLQC_STAGE2_AB (the run's resolved `stage2_ab` section, its dump folder, its numbered train
rows, their image folder and its base model), written by `vlqc.train.run`; `vlqc.train.stage2.main` points
ms-swift at this class.
"""

from __future__ import annotations

import base64
import json
import mimetypes
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
from vlqc.jsonl import read_jsonl
from vlqc.train.stage2.dump import RolloutDumpWriter, rollout_record
from vlqc.train.stage2.remote import RolloutClient, learner_adapter
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
        # Read as written by vlqc.train.run a moment before (validated there).
        self.source_rows = list(read_jsonl(self.stage2["rows"]))
        self.server, self.synced_step = None, None
        rollout = self.stage2["rollout"]
        if rollout["backend"] == "server":
            server = rollout["server"]
            self.server = RolloutClient.connect(
                server["url"],
                self.stage2["base_model"],
                timeout_s=server["timeout_s"],
                connect_timeout_s=server["connect_timeout_s"],
            )
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
        for row in rows:
            row["source"] = self.source_row(row["channel"])
            meta = row["source"]["meta"]
            row["sample_id"] = f"{meta['source']}@{meta['epoch']}"
        rollout = self.stage2["rollout"]
        if self.server is not None and self.synced_step != step:
            self.sync_server(step)
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

    def source_row(self, channel: str | None) -> dict[str, Any]:
        if channel is None or not channel.isdigit() or int(channel) >= len(self.source_rows):
            raise VlqcError(f"a Stage-2 batch row has channel {channel!r}, not a line of {self.stage2['rows']}")
        return self.source_rows[int(channel)]

    def sync_server(self, step: int) -> None:
        """The rollout server takes the learner's adapter (rank 0 sends it; every rank waits for it)."""
        started = time.perf_counter()
        if self.args.process_index == 0:
            self.server.sync(*learner_adapter(self.accelerator.unwrap_model(self.model)), step)
        self.accelerator.wait_for_everyone()
        self.synced_step = step
        self.pending["time/rollout_sync_s"].append(time.perf_counter() - started)

    def rollouts(self, rows: list[dict[str, Any]], *, seed: int, max_new_tokens: int) -> list[list[int]]:
        """Greedy answers to the rows' prompts, each ended by its first stop token when it stopped."""
        stops = [self.template.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        if self.server is None:
            # Seeded on a fork of the RNG: training's dropout draws stay what they would be with rollouts
            # on a server (or none).
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices), self.rollout_mode() as model:
                torch.manual_seed(seed)
                answers = greedy_answers(model, self.template.tokenizer, rows, stops, max_new_tokens)
        else:
            prompts = [infer_request(row["source"], self.stage2["image_root"]) for row in rows]
            answers = self.server.generate(
                prompts, [row["prompt_ids"] for row in rows], max_new_tokens=max_new_tokens, seed=seed
            )
        # The first stop ends the answer (kept: the builder reads it); padding after it is not the model's.
        return [tokens[: next((i + 1 for i, t in enumerate(tokens) if t in stops), len(tokens))] for tokens in answers]

    def build_row(self, row: dict[str, Any], rollout: list[int], stats: dict, step: int, dump: bool) -> dict:
        """The row's channel-B encoding, or its own (channel A) when the builder falls back."""
        own = {k: row[k] for k in ("input_ids", "labels", "pixel_values", "image_grid_thw", "mm_token_type_ids")}
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
            # The built sequence starts with the row's prompt (its image tokens); all after it is text. The
            # collator would make every token text otherwise, and the image's positions (M-RoPE) wrong.
            types = row["mm_token_type_ids"][: len(row["prompt_ids"])]
            types = torch.cat([types, types.new_zeros(len(result.input_ids) - len(types))])
            own.update(input_ids=result.input_ids, labels=result.labels, mm_token_type_ids=types)
        if dump:
            self.dumps.submit(self.dump_record(row, rollout, result, truth, step))
        # The collator takes rows as the dataset gives them, on the CPU; the batch they came from is on the
        # accelerator (the trainer moves the new batch there again).
        return {key: value.cpu() if isinstance(value, torch.Tensor) else value for key, value in own.items()}

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


def greedy_answers(model, tokenizer, rows: list[dict[str, Any]], stops: list[int], max_new_tokens: int) -> list:
    """The rows' greedy answers (token ids, padding after a stop included) from `model`, one generate call
    (prompts padded left): `prompt_ids`, `mm_token_type_ids`, `pixel_values` and `image_grid_thw` of each row."""
    prompts = [row["prompt_ids"] for row in rows]
    width = max(len(p) for p in prompts)
    device = rows[0]["pixel_values"].device
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long, device=device)
    mask, types = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt, device=device)
        mask[i, width - len(prompt) :] = 1
        types[i, width - len(prompt) :] = rows[i]["mm_token_type_ids"][: len(prompt)]
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        mm_token_type_ids=types,  # without them generate places the image tokens wrong (M-RoPE), silently
        pixel_values=torch.cat([row["pixel_values"] for row in rows]),
        image_grid_thw=torch.cat([row["image_grid_thw"] for row in rows]),
        generation_config=config,
    )
    return out[:, width:].tolist()


def infer_request(source: dict[str, Any], image_root: str) -> dict[str, Any]:
    """`swift rollout`'s infer request for a train row: its system and user turns and its photo inline (the
    server need not see this machine's files)."""
    images = []
    for name in source.get("images", []):
        path = os.path.join(image_root, name)
        kind = mimetypes.guess_type(path)[0] or "image/jpeg"
        with open(path, "rb") as image:
            images.append(f"data:{kind};base64,{base64.b64encode(image.read()).decode()}")
    return {"messages": source["messages"][:2], "images": images}


def split_rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a collated batch (one image a row): each row's unpadded ids, labels and token types (image
    or text: what M-RoPE places by), its prompt (the ids before the first label), its answer (the labelled
    ids), its image's patches and its `channel`."""
    grids = batch["image_grid_thw"]
    count = batch["input_ids"].shape[0]
    if grids.shape[0] != count:
        raise VlqcError(f"Stage-2 channel B needs one image a row; this batch has {grids.shape[0]} for {count} rows")
    patches = grids.prod(dim=-1).tolist()
    channels = batch.get("channel") or [None] * count  # the rows' line numbers (vlqc.train.run)
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
                "channel": channels[i],
                "input_ids": ids,
                "labels": labels,
                "prompt_ids": ids[:first],
                "answer_ids": ids[first:last],
                "pixel_values": pixels[i],
                "image_grid_thw": grids[i : i + 1],
                "mm_token_type_ids": batch["mm_token_type_ids"][i][real],
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
