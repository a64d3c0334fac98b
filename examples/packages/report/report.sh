# Prints the configuration and greets its owner (CONFIG and OWNER are set
# by the wrapper above, `hello` is on its PATH).
echo "config: $(cat "$CONFIG")"
exec hello "$OWNER"
