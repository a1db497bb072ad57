#!/usr/bin/env bash
# The grounded-sparse options, one SKD run each from the LiT base (docs/results.md "Grounded sparse terms").
# Every run: the content vocabulary (min_df 2), captions capped at 16 terms; the image budget of 64 terms unless
# the run says otherwise. Each finished run (results.json present) is kept.
set -euo pipefail
# shellcheck source=scripts/sweep_run.sh
source "$(dirname "$0")/sweep_run.sh"
run() {  # run NAME KEY=VALUE...: one run into $RUNS/grounding/NAME
  sweep_run "$RUNS/grounding/$1" skd model.sparse_head.vocabulary=content model.sparse_head.min_df=2 \
    model.sparse_head.max_text_terms=16 "${@:2}"
}

BUDGET=(model.sparse_head.image_terms=64)
OWN=(model.sparse_head.expansion=always model.sparse_head.own_text_activation=softplus)
FEATURES=(model.sparse_head.head_input=features model.sparse_head.input_dropout=0.5)
run d2s "${BUDGET[@]}" model.sparse_head.expansion=d2s
run always "${BUDGET[@]}" model.sparse_head.expansion=always
run always_softplus "${BUDGET[@]}" "${OWN[@]}"
run always_bow "${BUDGET[@]}" "${OWN[@]}" loss.bow_weight=1.0
run inference_free_bow "${BUDGET[@]}" "${OWN[@]}" model.sparse_head.query_encoder=inference_free loss.bow_weight=1.0
run features_bow "${BUDGET[@]}" "${OWN[@]}" "${FEATURES[@]}" loss.bow_weight=2.0
run features_bow_word "${BUDGET[@]}" "${OWN[@]}" "${FEATURES[@]}" loss.bow_weight=2.0 loss.word_loss_weight=0.5 \
  fusion_metric=rsum selection_gp10_floor=0.4
run features_bow_word_bce "${BUDGET[@]}" "${OWN[@]}" "${FEATURES[@]}" loss.bow_weight=2.0 loss.word_loss=bce \
  loss.word_loss_weight=0.2 fusion_metric=rsum selection_gp10_floor=0.4
# The default preset (python -m training grounded) without the image budget: the FLOPs regulariser on images with
# more than 64 active terms instead of a trained top-k.
run no_image_budget "${OWN[@]}" "${FEATURES[@]}" model.sparse_head.query_encoder=inference_free loss.bow_weight=2.0 \
  loss.word_loss_weight=0.5 fusion_metric=rsum selection_gp10_floor=0.4 loss.regularizer=flops \
  loss.image_reg_threshold=64 loss.eta_image=1e-2
