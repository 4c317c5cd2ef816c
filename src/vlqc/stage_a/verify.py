"""Check every selected photo before inference: it opens, and the processor turns it into as many
image tokens as its vision grid says (the contract between the processor and the model).

One `stage_a_verify` row per image; problems are reported per image and never stop the step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from tqdm import tqdm

from vlqc.errors import SampleError
from vlqc.inference.generation import check_image
from vlqc.inference.prompts import hf_messages
from vlqc.stage_a.discover import Group
from vlqc.stage_a.images import image_info, load_image
from vlqc.stage_a.jobs import image_jobs


def image_tokens(processor, image) -> dict[str, Any]:
    """grid_thw of `image`, the image tokens it implies, and the image tokens a prompt really gets."""
    text = processor.apply_chat_template(hf_messages("", "<image>", [image]), tokenize=False)
    batch = processor(text=[text], images=[image], return_tensors="pt")
    grid = [int(v) for v in batch["image_grid_thw"][0]]
    merge = processor.image_processor.merge_size
    expected = grid[0] * grid[1] * grid[2] // merge**2
    actual = int((batch["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    return {"grid_thw": grid, "expected_tokens": expected, "actual_tokens": actual, "match": expected == actual}


def verify(groups: Sequence[Group], processor) -> Iterator[dict[str, Any]]:
    jobs = [job for g in groups for job in image_jobs(g)]
    for job in tqdm(jobs, desc="verify", unit="img", mininterval=5):
        row = {
            "group_seq": job.group_seq,
            "group_id": job.group_id,
            "image_index": job.image_index,
            "image_name": job.path.name,
        }
        try:
            info = image_info(job.path)
            image = load_image(job.path)
            check_image(processor, image, str(job.path))
        except SampleError as error:
            yield {**row, "ok": False, "error": {"code": error.code, "message": str(error)}}
            continue
        tokens = image_tokens(processor, image)
        yield {**row, "ok": True, **info, **tokens}
