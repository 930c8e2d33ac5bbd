#!/usr/bin/env bash
# The loop on real text, all on all-MiniLM-L6-v2 (about an hour on 2 CPU cores) -> reports/loop.{md,json}:
# caption traffic served by the original -> RetrainFlow; the drift check (leap monitor) of its candidate on caption
# and on news traffic; news traffic served by the champion -> RetrainFlow.   Usage: bash infra/loop_demo.sh [WORK_DIR]
set -euo pipefail
W=${1:-runs/loop}; PY=${PYTHON:-python}; mkdir -p "$W"; W=$(cd "$W" && pwd)
export MLFLOW_TRACKING_URI=sqlite:///$W/mlflow.db METAFLOW_HOME=$W/mf
export LEAP_DATA_DIR=${LEAP_DATA_DIR:-../shared/data}
cd "$(dirname "$0")/.."
leap() { $PY -m leap_core.cli "$@"; }
CAPS=flickr30k_captions_multi30k,coco_val2017_captions,flickr8k_captions
NEWS=mrpc,mnli_subset
ORIG=sentence-transformers/all-MiniLM-L6-v2
mkdir -p $W/texts
leap sample-texts --sources $CAPS --n 6000 --out $W/texts/captions_log.txt
leap sample-texts --sources $CAPS --n 1500 --offset 6000 --out $W/texts/captions_drift.txt
leap sample-texts --sources $NEWS --n 1500 --out $W/texts/news_drift.txt
leap sample-texts --sources $NEWS --n 6000 --offset 1500 --out $W/texts/news_log.txt
echo "== $(date) captions traffic served by the original"
[ -d $W/logs/captions ] || leap replay $ORIG --texts $W/texts/captions_log.txt --traffic $W/logs/captions
echo "== $(date) retrain 1 (captions)"
$PY flows/retrain_flow.py --no-pylint run --traffic $W/logs/captions --profile cpu --output-dir $W/runs \
  --reports-dir $W/reports > $W/retrain1.log 2>&1
R1=$(ls -t $W/reports/retrain | head -1); echo "retrain 1: $R1"
CAND1=$($PY -c "import json;print(json.load(open('$W/reports/retrain/$R1/retrain.json'))['candidate']['model'])")
echo "== $(date) drift test on $CAND1"
leap replay $CAND1 --texts $W/texts/captions_drift.txt --traffic $W/logs/drift_captions
leap replay $CAND1 --texts $W/texts/news_drift.txt --traffic $W/logs/drift_news
leap monitor $CAND1 --traffic $W/logs/drift_captions --out $W/reports/monitor_captions.json || true
leap monitor $CAND1 --traffic $W/logs/drift_news --out $W/reports/monitor_news.json || true
CHAMP=$($PY -c "
import json; r=json.load(open('$W/reports/retrain/$R1/retrain.json')); print(r['candidate']['model'] if r['promoted'] else '$ORIG')")
echo "== $(date) news traffic served by the champion $CHAMP"
leap replay $CHAMP --texts $W/texts/news_log.txt --traffic $W/logs/news
echo "== $(date) retrain 2 (news)"
$PY flows/retrain_flow.py --no-pylint run --traffic $W/logs/news --profile cpu --output-dir $W/runs \
  --reports-dir $W/reports > $W/retrain2.log 2>&1
R2=$(ls -t $W/reports/retrain | head -1)
leap loop-report --retrain $W/reports/retrain/$R1/retrain.json --retrain $W/reports/retrain/$R2/retrain.json \
  --monitor $W/reports/monitor_captions.json --monitor $W/reports/monitor_news.json --out reports/loop.md \
  --command "bash infra/loop_demo.sh" --relative-to "$W"
echo "== $(date) done"
