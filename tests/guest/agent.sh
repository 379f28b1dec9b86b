# Command agent on ttyS1. The host sends "ID BASE64-OF-SCRIPT" per line; the
# agent answers "@@S ID", the script's output, "@@E ID STATUS", each marker on
# a line of its own (a newline is printed before it, so output needs none).
printf '\n@@READY %s\n' "$(cd /dev && echo vd*)"
while IFS=' ' read -r id b64; do
    [ -n "$id" ] || continue
    echo "$b64" | base64 -d >/tmp/.cmd
    sh /tmp/.cmd </dev/null >/tmp/.out 2>&1
    rc=$?
    printf '\n@@S %s\n' "$id"
    cat /tmp/.out
    printf '\n@@E %s %s\n' "$id" "$rc"
done
