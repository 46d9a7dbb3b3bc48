# Sourced by the reliability campaigns (kill_campaign.sh, nan_outcomes.sh): sets GUIDIFF (the
# binary, build/guidiff unless the environment names another) and W (a scratch directory removed
# on exit), and defines fail, which counts a failed check for the campaign's summary.
#   campaign_setup NAME
campaign_setup() {
  GUIDIFF="$(pwd)/${GUIDIFF:-build/guidiff}"
  [ -x "$GUIDIFF" ] || { echo "$1: $GUIDIFF not built (bash scripts/build.sh)" >&2; exit 2; }
  W="$(mktemp -d "/tmp/guidiff-$1-XXXXXX")"
  trap 'rm -rf "$W"' EXIT
  failures=0
}
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
