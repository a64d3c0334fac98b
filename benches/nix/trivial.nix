# The graph of `build-bench trivial N`: N derivations
# `/bin/sh -c 'echo i > $out'` and one that depends on all of them (its
# arguments name every output; it writes N).
#
#   nix-build benches/nix/trivial.nix --arg n 1000 --no-out-link
{ n }:
let
  mk = i: derivation {
    name = "trivial-${toString i}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo ${toString i} > $out" ];
  };
in
derivation {
  name = "trivial-all";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  # `sh -c SCRIPT a1 … aN` has $0 = a1 and N - 1 more arguments.
  args = [ "-c" "echo $(($# + 1)) > $out" ] ++ map toString (builtins.genList mk n);
}
