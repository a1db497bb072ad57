#!/usr/bin/env bash
# The word-vocabulary options, one grounded run each from the LiT base (docs/results.md "Whole-word vocabulary"):
# the grounded preset with its terms as content pieces (the preset before words), as whole words, with inflections
# merged, with every caption word (min_df 1), with the hub loss, with the BCE caption-word loss, and with softplus
# image weights. Every run pins the options the table compares, so it does not move with the preset. A finished run
# is kept.
set -euo pipefail
# shellcheck source=scripts/sweep_run.sh
source "$(dirname "$0")/sweep_run.sh"
run() {  # run NAME KEY=VALUE...: one run of the grounded preset into $RUNS/words/NAME
  sweep_run "$RUNS/words/$1" grounded "${@:2}"
}

# what the preset was before words: relu image weights, the softmax caption-word loss 0.5, no hub loss
BASE=(model.sparse_head.image_activation=relu loss.word_loss=softmax loss.word_loss_weight=0.5 loss.hub_weight=0)
WORDS=("${BASE[@]}" model.sparse_head.vocabulary=words)
MERGED=("${WORDS[@]}" model.sparse_head.inflections=merge)
DF1=("${MERGED[@]}" model.sparse_head.min_df=1)
SOFTPLUS=("${DF1[@]}" model.sparse_head.image_activation=softplus)
BCE=(loss.word_loss=bce)
run pieces "${BASE[@]}" model.sparse_head.vocabulary=content model.sparse_head.min_df=2 \
  model.sparse_head.inflections=keep
run words "${WORDS[@]}" model.sparse_head.min_df=2 model.sparse_head.inflections=keep
run words_merged "${MERGED[@]}" model.sparse_head.min_df=2
run words_merged_df1 "${DF1[@]}"
run words_merged_hub "${MERGED[@]}" model.sparse_head.min_df=2 loss.hub_weight=1 loss.hub_scope=all
run words_merged_hub5 "${MERGED[@]}" model.sparse_head.min_df=2 loss.hub_weight=5 loss.hub_scope=all
run words_merged_hub5_share02 "${MERGED[@]}" model.sparse_head.min_df=2 loss.hub_weight=5 loss.hub_scope=all \
  loss.hub_max_share=0.2
run words_merged_df1_hub "${DF1[@]}" loss.hub_weight=1 loss.hub_scope=all
run words_merged_df1_hub_non_caption "${DF1[@]}" loss.hub_weight=5 loss.hub_scope=non_caption
run words_merged_bce "${MERGED[@]}" model.sparse_head.min_df=2 "${BCE[@]}" loss.word_loss_weight=0.2
run words_softplus "${SOFTPLUS[@]}"
run words_softplus_bce05 "${SOFTPLUS[@]}" "${BCE[@]}" loss.word_loss_weight=0.5
run words_softplus_bce02 "${SOFTPLUS[@]}" "${BCE[@]}" loss.word_loss_weight=0.2
run words_softplus_bce01 "${SOFTPLUS[@]}" "${BCE[@]}" loss.word_loss_weight=0.1
run words_softplus_bce005 "${SOFTPLUS[@]}" "${BCE[@]}" loss.word_loss_weight=0.05
run words_softplus_bce01_hub05_non_caption "${SOFTPLUS[@]}" "${BCE[@]}" loss.word_loss_weight=0.1 \
  loss.hub_weight=0.5 loss.hub_scope=non_caption
run words_softplus_bce01_hub1 "${SOFTPLUS[@]}" "${BCE[@]}" loss.word_loss_weight=0.1 loss.hub_weight=1 \
  loss.hub_scope=all
run words_softplus_bce01_hub5 "${SOFTPLUS[@]}" "${BCE[@]}" loss.word_loss_weight=0.1 loss.hub_weight=5 \
  loss.hub_scope=all
for share in 030 025 024 022 020; do
  run "words_softplus_bce01_floor$share" "${SOFTPLUS[@]}" "${BCE[@]}" loss.word_loss_weight=0.1 \
    "model.sparse_head.image_term_max_share=0.${share#0}"
done
