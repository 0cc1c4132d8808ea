"""The heads over the GPT-2 trunk, with transformers' class names, forward arguments, outputs and losses.

>>> from gpt2.torch import GPT2LMHeadModel
>>> model = GPT2LMHeadModel.from_pretrained("gpt2-folder")
>>> out = model(input_ids, labels=input_ids)        # out.loss, out.logits (B, T, vocab), out.past_key_values
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.outputs import (
    CausalLMOutputWithCrossAttentions,
    GPT2DoubleHeadsModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from .generation import GenerationMixin
from .model import GPT2Model, identity, project
from .pretrained import GPT2PreTrainedModel

IGNORE_INDEX = -100  # label value that no loss counts (transformers' convention)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from position t (labels are the inputs, unshifted), in fp32.

    The labels are shifted instead of the logits: position t's label is labels[t + 1] and the last position's is
    ignored, which is transformers' loss (the same terms, the same mean) without copying the (..., T - 1, V) slice.
    ``_CrossEntropy`` computes it and, when the logits need a gradient, the gradient too, a few rows at a time.
    """
    labels = labels.to(logits.device)
    shifted = torch.cat([labels[..., 1:], labels.new_full((*labels.shape[:-1], 1), IGNORE_INDEX)], dim=-1)
    return _CrossEntropy.apply(logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1))


# Rows of logits that _CrossEntropy takes at a time on the CPU: 32 x 50257 fp32 values (6 MiB) stay in the cache
# between the passes over them (the log-sum-exp, the target's logit, the gradient), where whole (N, V) passes go to
# memory (1024 x 50257: ~0.35 s instead of log_softmax + nll_loss's ~0.56 s on one core). On a GPU all rows at once:
# its kernels stream memory either way, and a launch per chunk would cost more than it saves.
CROSS_ENTROPY_ROWS = 32


class _CrossEntropy(torch.autograd.Function):
    """F.cross_entropy(logits (N, V), labels (N,), ignore_index=IGNORE_INDEX) in fp32, mean over the counted rows,
    with d loss / d logits = (softmax - one_hot) / count computed in the forward pass, on the CPU CROSS_ENTROPY_ROWS
    rows at a time while they are in the cache; backward scales it. The same values as log_softmax + nll_loss within
    fp32 rounding, without their (N, V) intermediates (log-probabilities, the gradient of nll_loss, the shifted
    copy), and one fp32 (N, V) tensor held for backward, as log_softmax holds its output. Every label counted must be a
    class index (0 <= label < V): another is an error, as F.cross_entropy's. No labels counted: the loss is NaN
    (0 / 0, as F.cross_entropy) and the gradient is zero."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        keep = labels != IGNORE_INDEX  # (N,)
        count = keep.sum().to(torch.float32)
        target = labels.masked_fill(~keep, 0)[:, None]  # [N, 1]
        grad = torch.empty(logits.shape, dtype=torch.float32, device=logits.device) \
            if ctx.needs_input_grad[0] else None
        weight = torch.where(keep, 1.0 / count, 0.0)  # (N,): 1 / count where counted (0 / 0 is never formed)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        with torch.autocast(logits.device.type, enabled=False):
            step = CROSS_ENTROPY_ROWS if logits.device.type == "cpu" else max(logits.shape[0], 1)
            for start in range(0, logits.shape[0], step):
                rows = slice(start, start + step)
                part = logits[rows].float()  # [n, V]; fp32 logits are read in place, never written
                lse = torch.logsumexp(part, dim=-1)  # (n,)
                total += ((lse - part.gather(1, target[rows]).squeeze(1)) * keep[rows]).sum()
                if grad is not None:
                    g = torch.sub(part, lse[:, None], out=grad[rows]).exp_()  # softmax
                    g.scatter_add_(1, target[rows], g.new_full(target[rows].shape, -1.0))
                    g.mul_(weight[rows, None])
        ctx.save_for_backward(grad)
        return total / count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (grad,) = ctx.saved_tensors
        if grad.device.type == "cpu" and not torch.is_grad_enabled() and grad_loss.item() == 1.0:
            # loss.backward(): the gradient as it is, not a (N, V) pass to multiply it by one (gpt2 train at batch
            # 4 x 256: 55 ms of a ~5 s update). autograd never writes into a gradient still held by a saved tensor.
            return grad, None
        return grad * grad_loss, None


def _trunk_args(input_ids, past_key_values, attention_mask, token_type_ids, position_ids, head_mask,
                inputs_embeds, use_cache, output_attentions, output_hidden_states, **extra):
    return dict(input_ids=input_ids, past_key_values=past_key_values, attention_mask=attention_mask,
                token_type_ids=token_type_ids, position_ids=position_ids, head_mask=head_mask,
                inputs_embeds=inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
                output_hidden_states=output_hidden_states, return_dict=True, **extra)


class GPT2LMHeadModel(GenerationMixin, GPT2PreTrainedModel):
    """GPT-2 with the language-model head (tied to wte unless config.tie_word_embeddings is False)."""

    def __init__(self, config, attn_implementation: str | None = None) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config, attn_implementation)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init(attn_implementation)

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
                position_ids=None, head_mask=None, inputs_embeds=None, encoder_hidden_states=None,
                encoder_attention_mask=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, logits_to_keep: int = 0):
        """``logits_to_keep``: compute logits for the last n positions only (0: all), as generation needs."""
        out = self.transformer(**_trunk_args(input_ids, past_key_values, attention_mask, token_type_ids,
                                             position_ids, head_mask, inputs_embeds, use_cache, output_attentions,
                                             output_hidden_states, encoder_hidden_states=encoder_hidden_states,
                                             encoder_attention_mask=encoder_attention_mask))
        x = out.last_hidden_state
        logits = project(self.lm_head, x[:, -logits_to_keep:] if logits_to_keep else x)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        result = CausalLMOutputWithCrossAttentions(loss, logits, out.past_key_values, out.hidden_states,
                                                   out.attentions, out.cross_attentions)
        return result if _return_dict(self, return_dict) else result.to_tuple()


class SequenceSummary(nn.Module):
    """Pool a sequence into one vector (transformers' SequenceSummary): the token at cls_index, last, first, mean."""

    def __init__(self, config) -> None:
        super().__init__()
        self.summary_type = config.summary_type
        if self.summary_type == "attn":
            raise ValueError("summary_type='attn' is not defined by GPT-2 (transformers raises too)")
        self.summary = nn.Identity()
        if config.summary_use_proj:
            out = config.num_labels if config.summary_proj_to_labels and config.num_labels > 0 else config.n_embd
            self.summary = nn.Linear(config.n_embd, out)
        self.activation = torch.tanh if config.summary_activation == "tanh" else identity  # no lambda: it pickles
        self.first_dropout = nn.Dropout(config.summary_first_dropout)
        self.last_dropout = nn.Dropout(getattr(config, "summary_last_dropout", 0.0) or 0.0)

    def forward(self, hidden_states: torch.Tensor, cls_index: torch.Tensor | None = None) -> torch.Tensor:
        # hidden_states (..., T, C) -> (..., C)
        if self.summary_type == "last":
            x = hidden_states[..., -1, :]
        elif self.summary_type == "first":
            x = hidden_states[..., 0, :]
        elif self.summary_type == "mean":
            x = hidden_states.mean(dim=-2)
        else:  # cls_index: the token at cls_index (default: the last one)
            T = hidden_states.shape[-2]
            if cls_index is None:
                cls_index = torch.full(hidden_states.shape[:-2], T - 1, dtype=torch.long, device=hidden_states.device)
            if int(cls_index.min()) < 0 or int(cls_index.max()) >= T:
                raise ValueError(f"mc_token_ids must be in 0..{T - 1}, got values {int(cls_index.min())}.."
                                 f"{int(cls_index.max())}")
            index = cls_index[..., None, None].expand(*cls_index.shape, 1, hidden_states.shape[-1])
            x = hidden_states.gather(-2, index).squeeze(-2)
        return self.last_dropout(self.activation(self.summary(self.first_dropout(x))))


class GPT2DoubleHeadsModel(GenerationMixin, GPT2PreTrainedModel):
    """GPT-2 with the LM head and a multiple-choice head over (B, num_choices, T) inputs."""

    def __init__(self, config, attn_implementation: str | None = None) -> None:
        super().__init__(config)
        config = self.config  # the model's own copy: the caller's config keeps its num_labels
        config.num_labels = 1  # as transformers: one score per choice
        self.transformer = GPT2Model(config, attn_implementation)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.multiple_choice_head = SequenceSummary(config)
        self.post_init(attn_implementation)

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
                position_ids=None, head_mask=None, inputs_embeds=None, mc_token_ids=None, labels=None,
                mc_labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        out = self.transformer(**_trunk_args(input_ids, past_key_values, attention_mask, token_type_ids,
                                             position_ids, head_mask, inputs_embeds, use_cache, output_attentions,
                                             output_hidden_states))
        x = out.last_hidden_state  # (B, num_choices, T, C)
        logits = project(self.lm_head, x)
        mc_logits = self.multiple_choice_head(x, mc_token_ids).squeeze(-1)  # (B, num_choices)
        mc_loss = loss = None
        if mc_labels is not None:
            mc_loss = F.cross_entropy(mc_logits.view(-1, mc_logits.shape[-1]), mc_labels.view(-1))
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        result = GPT2DoubleHeadsModelOutput(loss, mc_loss, logits, mc_logits, out.past_key_values,
                                            out.hidden_states, out.attentions)
        return result if _return_dict(self, return_dict) else result.to_tuple()


class GPT2ForSequenceClassification(GPT2PreTrainedModel):
    """Classify a sequence from its last non-padding token (config.pad_token_id is needed for batches > 1)."""

    def __init__(self, config, attn_implementation: str | None = None) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config, attn_implementation)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.post_init(attn_implementation)

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
                position_ids=None, head_mask=None, inputs_embeds=None, labels=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        out = self.transformer(**_trunk_args(input_ids, past_key_values, attention_mask, token_type_ids,
                                             position_ids, head_mask, inputs_embeds, use_cache, output_attentions,
                                             output_hidden_states))
        logits = self.score(out.last_hidden_state)  # (B, T, num_labels)
        B, T = logits.shape[:2]
        pad = self.config.pad_token_id
        if pad is None and B != 1:
            raise ValueError("GPT2ForSequenceClassification needs config.pad_token_id for batches of more than "
                             "one sequence (it pools the last non-padding token)")
        if pad is None or input_ids is None:
            last = torch.full((B,), T - 1, device=logits.device)
        else:  # the rightmost token that is not padding (right or left padding alike)
            positions = torch.arange(T, device=logits.device)
            last = (positions * (input_ids.to(logits.device) != pad)).argmax(-1)
        pooled = logits[torch.arange(B, device=logits.device), last]  # (B, num_labels)
        loss = None if labels is None else self._loss(pooled, labels.to(pooled.device))
        result = SequenceClassifierOutputWithPast(loss, pooled, out.past_key_values, out.hidden_states,
                                                  out.attentions)
        return result if _return_dict(self, return_dict) else result.to_tuple()

    def _loss(self, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        problem = self.config.problem_type
        if problem is None:  # transformers' inference of the problem from labels (and it records it)
            if self.config.num_labels == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
            self.config.problem_type = problem  # on the model's own copy (never the caller's config)
        if problem == "regression":
            if self.config.num_labels == 1:
                return F.mse_loss(pooled.squeeze(), labels.squeeze().to(pooled.dtype))
            return F.mse_loss(pooled, labels.to(pooled.dtype))
        if problem == "single_label_classification":
            return F.cross_entropy(pooled.view(-1, self.config.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(pooled, labels.to(pooled.dtype))


class GPT2ForTokenClassification(GPT2PreTrainedModel):
    """A label per token."""

    def __init__(self, config, attn_implementation: str | None = None) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config, attn_implementation)
        p = getattr(config, "classifier_dropout", None)
        p = p if p is not None else getattr(config, "hidden_dropout", None)
        self.dropout = nn.Dropout(p if p is not None else 0.1)  # transformers' default for GPT-2
        self.classifier = nn.Linear(config.n_embd, config.num_labels)
        self.post_init(attn_implementation)

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
                position_ids=None, head_mask=None, inputs_embeds=None, labels=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        out = self.transformer(**_trunk_args(input_ids, past_key_values, attention_mask, token_type_ids,
                                             position_ids, head_mask, inputs_embeds, use_cache, output_attentions,
                                             output_hidden_states))
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.to(logits.device).view(-1))
        result = TokenClassifierOutput(loss, logits, out.hidden_states, out.attentions)
        return result if _return_dict(self, return_dict) else result.to_tuple()


class GPT2ForQuestionAnswering(GPT2PreTrainedModel):
    """Extractive QA: a start and an end logit per token."""

    def __init__(self, config, attn_implementation: str | None = None) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config, attn_implementation)
        self.qa_outputs = nn.Linear(config.n_embd, 2)
        self.post_init(attn_implementation)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                head_mask=None, inputs_embeds=None, start_positions=None, end_positions=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        out = self.transformer(**_trunk_args(input_ids, None, attention_mask, token_type_ids, position_ids,
                                             head_mask, inputs_embeds, False, output_attentions,
                                             output_hidden_states))
        start_logits, end_logits = self.qa_outputs(out.last_hidden_state).unbind(-1)  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.shape[1]  # positions outside the sequence are ignored, as in transformers
            start = start_positions.view(-1).clamp(0, ignored).to(start_logits.device)
            end = end_positions.view(-1).clamp(0, ignored).to(end_logits.device)
            loss = (F.cross_entropy(start_logits, start, ignore_index=ignored)
                    + F.cross_entropy(end_logits, end, ignore_index=ignored)) / 2
        result = QuestionAnsweringModelOutput(loss, start_logits.contiguous(), end_logits.contiguous(),
                                              out.hidden_states, out.attentions)
        return result if _return_dict(self, return_dict) else result.to_tuple()


def _return_dict(model, return_dict) -> bool:
    return model.config.return_dict if return_dict is None else return_dict
