# The generic builder of bigtop packages (POSIX sh), run as
# `$shell -e setup.sh`: it puts the inputs' bin, include and lib
# directories on the search paths, then runs the phases. Each phase runs
# `$pre<Phase>`, then `$<phase>Phase` if the package replaced it (else the
# default below), then `$post<Phase>`; all are shell text, `eval`ed.

# The store's "nowhere" PATH goes: only inputs are found by name.
[ "$PATH" = /path-not-set ] && PATH=
for p in $stdenvTools $buildInputs $runtimeInputs; do
    [ -d "$p/bin" ] && PATH="${PATH:+$PATH:}$p/bin"
    [ -d "$p/include" ] && CPATH="${CPATH:+$CPATH:}$p/include"
    [ -d "$p/lib" ] && LIBRARY_PATH="${LIBRARY_PATH:+$LIBRARY_PATH:}$p/lib"
done
# The run path of what links here, unless the link names its own
# (`-rpath`): the package's own libraries, then each input's. GNU ld reads
# it, so a program linking a library of another package finds it at run
# time, and the reference scanner finds that package in its output.
if [ -z "${LD_RUN_PATH+set}" ]; then
    LD_RUN_PATH="$out/lib"
    for p in $buildInputs $runtimeInputs; do
        [ -d "$p/lib" ] && LD_RUN_PATH="$LD_RUN_PATH:$p/lib"
    done
fi
export PATH CPATH LIBRARY_PATH LD_RUN_PATH

defaultUnpack() {
    [ -n "${src:-}" ] || return 0
    if [ -d "$src" ]; then
        cp -R "$src" source
        chmod -R u+w source
    else
        mkdir source
        tar -xf "$src" -C source
        # A tarball of one directory: that directory is the source.
        entries=0
        for e in source/* source/.[!.]*; do
            [ -e "$e" ] && entries=$((entries + 1)) && only=$e
        done
        if [ "$entries" -eq 1 ] && [ -d "$only" ]; then
            mv "$only" source.tmp && rmdir source && mv source.tmp source
        fi
    fi
    cd source
}

defaultPatch() {
    for p in ${patches:-}; do
        echo "applying $p"
        patch -p1 < "$p"
    done
}

# $configureFlags and $makeFlags hold one flag a line: the subshells
# below split them on newlines only, and glob nothing, so that each flag
# is one argument however many spaces it holds.
NL='
'

defaultConfigure() {
    if [ -x ./configure ]; then
        (IFS=$NL; set -f; exec ./configure --prefix="$out" ${configureFlags:-})
    fi
}

hasMakefile() {
    [ -f Makefile ] || [ -f makefile ] || [ -f GNUmakefile ]
}

defaultBuild() {
    if hasMakefile; then
        (IFS=$NL; set -f; exec make -j"${BIGTOP_BUILD_CORES:-1}" ${makeFlags:-})
    fi
}

defaultCheck() {
    if [ "${doCheck:-}" = 1 ] && hasMakefile; then
        (IFS=$NL; set -f; exec make check ${makeFlags:-})
    fi
}

defaultInstall() {
    if hasMakefile; then
        (IFS=$NL; set -f; exec make install PREFIX="$out" prefix="$out" ${makeFlags:-} ${installFlags:-})
    fi
}

defaultFixup() {
    # Runtime inputs are recorded in the output, so that they stay in its
    # runtime closure even where nothing else names them.
    if [ -n "${runtimeInputs:-}" ] && [ -d "$out" ]; then
        mkdir -p "$out/share/bigtop"
        printf '%s\n' $runtimeInputs > "$out/share/bigtop/runtime-inputs"
    fi
}

# Every ELF file of an output must find each library it needs in its
# run path (`$ORIGIN` as the loader reads it), or among the libraries the
# stdenv itself runs with (`$LD_LIBRARY_PATH`: the bootstrap's C library):
# otherwise it builds, then fails at run time, and its runtime closure
# lacks the library. `dontCheckLibraries=1` turns this off.
isElf() {
    [ "$(head -c 4 "$1" | tr -d '\000')" = "$(printf '\177ELF')" ]
}

checkElf() {
    f=$1
    dynamic=$(readelf -d "$f" 2>/dev/null) || return 0
    origin=${f%/*}
    dirs=$(printf '%s\n' "$dynamic" | sed -n 's/.*(R[UN]*PATH).*\[\(.*\)\]/\1/p' |
        sed "s|\\\$ORIGIN|$origin|g; s|\\\${ORIGIN}|$origin|g" | tr '\n' ':')
    for lib in $(printf '%s\n' "$dynamic" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
        found=
        oldIfs=$IFS
        IFS=:
        for d in $dirs ${LD_LIBRARY_PATH:-}; do
            if [ -n "$d" ] && [ -e "$d/$lib" ]; then
                found=1
                break
            fi
        done
        IFS=$oldIfs
        if [ -z "$found" ]; then
            echo "bigtop: $f needs $lib, which is in none of its run path (${dirs:-empty}):" >&2
            echo "  add the package that has it as a build input (its lib becomes the run path)," >&2
            echo "  or set dontCheckLibraries=1 if it is found another way" >&2
            badLibraries=1
        fi
    done
}

checkTree() {
    for f in "$1"/* "$1"/.[!.]*; do
        if [ -L "$f" ] || [ ! -e "$f" ]; then
            continue
        elif [ -d "$f" ]; then
            checkTree "$f"
        elif [ -f "$f" ] && isElf "$f"; then
            if ! command -v readelf >/dev/null 2>&1; then
                echo "bigtop: cannot check the libraries of $f: no readelf in the stdenv (set dontCheckLibraries=1)" >&2
                exit 1
            fi
            checkElf "$f"
        fi
    done
}

checkLibraries() {
    [ "${dontCheckLibraries:-}" = 1 ] && return 0
    badLibraries=
    for o in $outputs; do
        eval "dir=\${$o:-}"
        [ -d "$dir" ] && checkTree "$dir"
    done
    [ -z "$badLibraries" ]
}

runPhase() {
    name=$1 lower=$2
    echo "bigtop: $lower phase"
    eval "pre=\${pre$name:-}"
    eval "$pre"
    eval "custom=\${${lower}Phase:-}"
    if [ -n "$custom" ]; then
        eval "$custom"
    else
        "default$name"
    fi
    eval "post=\${post$name:-}"
    eval "$post"
}

runPhase Unpack unpack
runPhase Patch patch
runPhase Configure configure
runPhase Build build
runPhase Check check
runPhase Install install
runPhase Fixup fixup
checkLibraries
