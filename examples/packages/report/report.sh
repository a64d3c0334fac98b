# Prints the configuration and greets its owner (CONFIG and OWNER are set
# by the wrapper above, `hello` is on its PATH). Shell builtins only: the
# script runs where nothing but its runtime closure and /bin/sh is seen.
printf 'config:'
while IFS= read -r line; do
    printf ' %s' "$line"
done < "$CONFIG"
echo
exec hello "$OWNER"
