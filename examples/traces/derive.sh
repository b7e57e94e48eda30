#!/usr/bin/env sh
# Derives the session example traces from the NAB traces beside this script, so that no
# number in them is typed by hand. Deterministic: run it again and nothing changes.
#
#   nyc_taxi_sessions.csv         the first 14 days of nyc_taxi.csv (passengers per 30 min):
#                                 rps = value / 20, arrivals = value / 8000 sessions/s
#   twitter_amzn_sessions.csv     the first 7 days of Twitter_volume_AMZN.csv (tweets per 5 min):
#                                 rps = value * 2, arrivals = value / 60 sessions/s
#
# Usage: examples/traces/derive.sh [OUT_DIR]   (from anywhere; OUT_DIR defaults to beside it)
set -eu
out="$(cd "${1:-$(dirname "$0")}" && pwd)"
cd "$(dirname "$0")"

derive() { # source, end (exclusive, as written in the source), rps factor, arrivals factor, out
    awk -F, -v end="$2" -v rps="$3" -v arrivals="$4" '
        NR == 1 { print "timestamp,rps,arrivals"; next }
        $1 >= end { exit }
        { printf "%s,%.2f,%.4f\n", $1, $2 * rps, $2 * arrivals }
    ' "$1" > "$5"
}

derive nyc_taxi.csv "2014-07-15 00:00:00" 0.05 0.000125 "$out/nyc_taxi_sessions.csv"
derive Twitter_volume_AMZN.csv "2015-03-05 21:42:53" 2 0.0166666667 "$out/twitter_amzn_sessions.csv"
