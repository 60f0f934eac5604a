"""sae-lens's TopK training SAE, computed on the active latents only.

sae-lens's ``TopKTrainingSAE`` decodes its codes with a dense (batch, d_sae) @ (d_sae, d_in) product, and
its auxiliary loss with another, although only ``k`` (and ``k_aux = d_in // 2``) latents of each row
are non-zero: with k = 16 of 2,048 latents over 99 % of that work (and of its backward pass) multiplies
zeros. :class:`SparseDecodeTopKTrainingSAE` is the same module with one method replaced,
``training_forward_pass``: the same encoder (dense, since every latent competes for the top k), the same
TopK selection, ReLU, decoder-norm rescaling, MSE and AuxK loss (scale, ``k_aux``, no bias, values not
ReLU'd, exactly as sae-lens computes them), but both decodes are weighted sums of the selected decoder
rows (:func:`featlib.universal.selected_rows`, the universal SAE's decode), whose backward passes touch
only those rows, and the encoder's gradient is formed from the selected pre-activations only
(:func:`featlib.universal.selected_linear`), not by the dense (d_in, batch) @ (batch, d_sae) product.

The result equals sae-lens's forward pass, losses and gradients up to float rounding
(``tests/test_saes.py`` compares them); the saved inference SAE is an ordinary sae-lens ``topk`` SAE.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from sae_lens.saes.topk_sae import TopKTrainingSAE

from .universal import selected_linear, selected_rows


class SparseDecodeTopKTrainingSAE(TopKTrainingSAE):
    """``TopKTrainingSAE`` whose training forward pass decodes only the selected latents (see module doc)."""

    def _decode_rows(self, idx: torch.Tensor, acts: torch.Tensor, norm: torch.Tensor | None) -> torch.Tensor:
        """(batch, d_in) sum over j of acts[:, j] * W_dec[idx[:, j]] (divided by the rows' norms when given)."""
        return selected_rows(self.W_dec, idx, acts / norm[idx] if norm is not None else acts)

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        rescale = self.cfg.rescale_acts_by_decoder_norm
        sae_in = self.process_sae_in(step_input.sae_in).detach()
        norm = self.W_dec.norm(dim=-1) if rescale else None
        with torch.no_grad():  # the dense encoder selects; gradients flow through the selected entries only
            linear = sae_in @ self.W_enc + self.b_enc
            hidden_pre = self.hook_sae_acts_pre(linear * norm if norm is not None else linear)
            idx = hidden_pre.topk(self.cfg.k, dim=-1, sorted=False).indices
        # b_dec's gradient through the encoder, -(d hidden_pre summed over rows) @ W_enc^T, without the dense
        # (batch, d_sae) @ (d_sae, d_in) product autograd would form for d sae_in: a term of value exactly zero
        # carries b_dec's part
        shift = self.b_dec * self.cfg.apply_b_dec_to_input @ self.W_enc.detach()
        shift = shift - shift.detach()

        def selected(cols: torch.Tensor) -> torch.Tensor:
            """hidden_pre at ``cols`` (batch, m), with the gradients of the encoder, b_dec and the norms."""
            pre = selected_linear(sae_in, self.W_enc, self.b_enc, cols, linear) - shift[cols]
            return pre * norm[cols] if norm is not None else pre

        acts = selected(idx).relu()
        with torch.no_grad():  # the dense codes, for the trainer's firing statistics only
            feature_acts = torch.zeros_like(hidden_pre).scatter_(-1, idx, acts)

        sae_out = self.hook_sae_recons(self._decode_rows(idx, acts, norm) + self.b_dec)
        sae_out = self.reshape_fn_out(self.run_time_activation_norm_fn_out(sae_out), self.d_head)
        mse_loss = self.mse_loss_fn(sae_out, step_input.sae_in).sum(dim=-1).mean()
        aux = self._aux_loss(step_input, sae_out, hidden_pre, selected, norm)
        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=mse_loss + aux,
            losses={"mse_loss": mse_loss, "auxiliary_reconstruction_loss": aux},
        )

    def _aux_loss(
        self,
        step_input: TrainStepInput,
        sae_out: torch.Tensor,
        hidden_pre: torch.Tensor,
        selected: Callable[[torch.Tensor], torch.Tensor],
        norm: torch.Tensor | None,
    ) -> torch.Tensor:
        """sae-lens's ``calculate_topk_aux_loss``: the top ``k_aux`` dead latents reconstruct the residual
        (``hidden_pre`` selects them, without gradient; ``selected`` gives their values with it)."""
        dead = step_input.dead_neuron_mask
        if dead is None or (num_dead := int(dead.sum())) == 0:
            return sae_out.new_tensor(0.0)
        if self.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
            raise ValueError(
                f"the TopK aux loss does not support normalize_activations={self.cfg.normalize_activations!r}"
            )
        residual = (step_input.sae_in - sae_out).detach()
        k_aux = step_input.sae_in.shape[-1] // 2
        scale = min(num_dead / k_aux, 1.0)
        cols = dead.nonzero().squeeze(1)  # the top among the dead columns only
        idx = cols[hidden_pre.index_select(-1, cols).topk(min(k_aux, num_dead), sorted=False).indices]
        recons = self.reshape_fn_out(self._decode_rows(idx, selected(idx), norm), self.d_head)
        return self.cfg.aux_loss_coefficient * scale * (recons - residual).pow(2).sum(dim=-1).mean()
