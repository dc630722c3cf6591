#!/usr/bin/env bash
# The H100 sessions' driver (reports/h100 quote its commands): the same steps now live in h200_session.sh,
# which works on either GPU; this keeps the H100's working folder.
W=${W:-/tmp/abprof-h100} exec bash "$(dirname "$0")/h200_session.sh" "$@"
