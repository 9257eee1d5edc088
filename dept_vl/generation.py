"""Generation for VLT5 (a mixin): answers and captions for images, each example with its own
adapter and task; examples of prompt adapters share one forward, an adapter that changes T5
(LoRA) decodes its own examples apart, and every example gets the answer it gets alone."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image

from dept_vl.tasks import get_task, task_input


class GenerationMixin:
    """`generate` and `generate_from_batch` of VLT5 (dept_vl/model.py)."""

    @torch.no_grad()
    def generate_from_batch(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
        adapter: str | None | Sequence[str | None] = "active",
        task: str | None = None,
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        """Decode answers for an already collated batch (one adapter, or one per example of
        a single task: the task sets the decoding). Examples that cannot share a forward (a
        LoRA adapter's, see `_forward_groups`) are decoded in their own sub-batches.

        `num_beams`: None takes the task's (greedy for VQA, 5 beams for captions); 1 is greedy;
        more is beam search with T5's generation settings (length_penalty 1 unless
        `self.t5.generation_config` says otherwise). One answer per example either way."""
        if num_beams is not None and not (isinstance(num_beams, int) and num_beams >= 1):
            # T5 would take 0 as "unset" and run the task's beams: refuse it instead
            raise ValueError(f"num_beams must be an integer >= 1 (or None: the task's), "
                             f"got {num_beams!r}")
        adapter = self.active_adapter if adapter == "active" else adapter
        task = task or self._batch_task(adapter)
        if adapter is not None and not isinstance(adapter, str):
            groups = self._forward_groups(list(adapter))
            if len(groups) > 1:
                return self._generate_groups(groups, input_ids, attention_mask, pixel_values,
                                             visual_features, list(adapter), task,
                                             num_beams=num_beams, max_new_tokens=max_new_tokens)
        spec = get_task(task)
        self.engage(adapter)
        inputs, mask = self.build_inputs(input_ids, attention_mask, pixel_values,
                                         visual_features, adapter)
        with self._not_checkpointing():
            output = self.t5.generate(
                inputs_embeds=inputs, attention_mask=mask,
                num_beams=num_beams or spec.num_beams,
                max_new_tokens=max_new_tokens or spec.max_new_tokens,
                do_sample=False,
            )
        return [text.strip() for text in self.tokenizer.batch_decode(output, skip_special_tokens=True)]

    @torch.no_grad()
    def generate(
        self,
        images: Sequence[Image.Image],
        texts: Sequence[str] | None = None,
        adapter: str | None | Sequence[str | None] = "active",
        task: str | None = None,
        num_beams: int | None = None,
        **generation: Any,
    ) -> list[str]:
        """Answers (VQA, greedy) or captions (beam search) for PIL images and questions.

        `adapter` names one adapter for all, or one per image (a mixed batch): examples of one
        task go through the backbone together, each with its own adapter (a LoRA adapter's
        examples in a pass of their own: `_forward_groups`). `num_beams` (None: each task's
        own, see `generate_from_batch`) holds for every task of the call.
        """
        adapter = self.active_adapter if adapter == "active" else adapter
        texts = list(texts) if texts is not None else [""] * len(images)
        if len(texts) != len(images):
            raise ValueError(f"got {len(images)} images but {len(texts)} texts")
        names = [adapter] * len(images) if adapter is None or isinstance(adapter, str) \
            else list(adapter)
        if len(names) != len(images):
            raise ValueError(f"got {len(images)} images but {len(names)} adapter names")
        tasks = [task or self.adapter_task(name) or "vqa" for name in names]
        answers: list[str] = [""] * len(images)
        for kind in dict.fromkeys(tasks):  # one decoding setting per task
            index = [i for i, t in enumerate(tasks) if t == kind]
            group = [names[i] for i in index]
            decoded = self._generate_task([images[i] for i in index], [texts[i] for i in index],
                                          group[0] if len(set(group)) == 1 else group, kind,
                                          num_beams=num_beams, **generation)
            for i, text in zip(index, decoded):
                answers[i] = text
        return answers

    def _generate_task(self, images: Sequence[Image.Image], texts: list[str],
                       adapter: str | None | list[str | None], task: str,
                       **generation: Any) -> list[str]:
        if get_task(task).uses_text:
            for i, text in enumerate(texts):
                if not text or not text.strip():
                    raise ValueError(f"text {i} is empty: task {task!r} needs a question")
        names = adapter if isinstance(adapter, list) else [adapter] * len(texts)
        limits = [self.get_adapter(n).tuner.text_limit if n is not None else None for n in names]
        batch = self.tokenize([task_input(task, t) for t in texts],
                              limits[0] if len(set(limits)) == 1 else limits)
        device = self.t5.device
        pixels = self.vision.preprocess(list(images)).to(device)
        return self.generate_from_batch(
            batch["input_ids"].to(device), batch["attention_mask"].to(device), pixels,
            adapter=adapter, task=task, **generation,
        )

    def _forward_groups(self, names: Sequence[str | None]) -> list[list[int]]:
        """Which examples of a batch go through T5 together: every prompt adapter's (and the
        bare backbone's) in one forward, each weights-kind adapter's (LoRA changes T5's own
        layers, see `engage`) in a forward of its own. Indices in batch order."""
        groups: dict[str | None, list[int]] = {}
        for i, name in enumerate(names):
            alone = name is not None and self.get_adapter(name).tuner.kind != "prompt"
            groups.setdefault(name if alone else None, []).append(i)
        return list(groups.values())

    def _generate_groups(
        self, groups: list[list[int]], input_ids: torch.Tensor, attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None, visual_features: torch.Tensor | None,
        names: list[str | None], task: str, **generation: Any,
    ) -> list[str]:
        """`generate_from_batch` for each group of rows (cut to the group's own longest text,
        as if it came alone), the answers put back in batch order."""
        answers = [""] * len(names)
        for index in groups:
            rows = torch.tensor(index, device=input_ids.device)
            width = text_length(attention_mask[rows])
            part = [names[i] for i in index]
            decoded = self.generate_from_batch(
                input_ids[rows, :width], attention_mask[rows, :width],
                None if pixel_values is None else pixel_values[rows],
                None if visual_features is None else visual_features[rows],
                adapter=part[0] if len(set(part)) == 1 else part, task=task, **generation)
            for i, text in zip(index, decoded):
                answers[i] = text
        return answers

    def _batch_task(self, adapter: str | None | Sequence[str | None]) -> str:
        """The task of a batch's adapter(s): one, or an error for a batch that mixes tasks."""
        names = [adapter] if adapter is None or isinstance(adapter, str) else list(adapter)
        tasks = {self.adapter_task(name) or "vqa" for name in names}
        if len(tasks) > 1:
            raise ValueError(f"a batch mixes tasks {sorted(tasks)}, which decode differently; "
                             "pass task=, or use generate(), which splits them")
        return tasks.pop()


def text_length(attention_mask: torch.Tensor) -> int:
    """Positions up to the last real token of any row (at least 1): the batch's dynamic width."""
    real = attention_mask.any(dim=0).nonzero()
    return int(real.max()) + 1 if len(real) else 1
