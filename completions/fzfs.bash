# bash completion for fzfs. Commands and options are read from `fzfs --help` and
# `fzfs COMMAND --help`, so this file never goes out of date with the binary.

_fzfs_help_words()
{
    # $1: command or "" -> the words of its help that start with "-" (options), or
    # the command names listed under "commands:".
    local cmd=$1 line
    if [[ -z $cmd ]]; then
        "${_fzfs_bin:-fzfs}" --help 2>/dev/null |
            awk '/^commands:/{c=1;next} c&&/^  [a-z]/{print $1} c&&/^$/{c=0}'
    else
        "${_fzfs_bin:-fzfs}" "$cmd" --help 2>/dev/null |
            grep -oE '(^|[ ,])--?[A-Za-z][A-Za-z0-9-]*' | tr -d ' ,' | sort -u
    fi
}

_fzfs()
{
    local cur prev cmd i
    _fzfs_bin=${COMP_WORDS[0]}
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=""
    ((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD - 1]}
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        [[ ${COMP_WORDS[i]} != -* ]] && { cmd=${COMP_WORDS[i]}; break; }
    done

    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W "$(_fzfs_help_words '') --help --version" -- "$cur"))
        return
    fi

    case $prev in
    --dtype) COMPREPLY=($(compgen -W "bfloat16 float16 float32" -- "$cur")); return ;;
    --device) COMPREPLY=($(compgen -W "cpu" -- "$cur")); return ;;
    --log-level) COMPREPLY=($(compgen -W "DEBUG INFO WARNING ERROR CRITICAL" -- "$cur")); return ;;
    --quantize)
        COMPREPLY=($(compgen -W "int4-weight-only int8-weight-only int8-dynamic-act-int8-weight \
int8-dynamic-act-int4-weight float8-dynamic-act-float8-weight" -- "$cur"))
        return ;;
    --generation-config)
        COMPREPLY=($(compgen -W "carry none" -- "$cur") $(compgen -f -- "$cur"))
        return ;;
    -c | --checkpoint | --cache-dir)
        COMPREPLY=($(compgen -d -- "$cur")); return ;;
    --add-tokens | -t | --chat-template-path | --log-file)
        COMPREPLY=($(compgen -f -- "$cur")); return ;;
    --workers | --cache-size | --max-shard-size | --stop-tokens | --embedding-tensors | \
    --quantize-ignore | -o | --options)
        return ;;
    esac

    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(_fzfs_help_words "$cmd")" -- "$cur"))
    elif [[ $cmd == cache ]]; then
        COMPREPLY=($(compgen -W "stats verify clear" -- "$cur"))
    else
        COMPREPLY=($(compgen -d -- "$cur"))
    fi
}

complete -F _fzfs fzfs
