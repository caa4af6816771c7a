//! The parser on Dockerfiles written for each rule.

use super::*;

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn continuations_and_comments_make_logical_lines() {
    let df = parse(
        "# syntax=docker/dockerfile:1\nFROM base\nRUN echo a \\\n  # a comment inside\n    && echo b\n\nrun echo c\\\n",
    )
    .unwrap();
    let steps = &df.stages[0].steps;
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].line, 3);
    assert_eq!(
        steps[0].directive,
        Directive::Run(Command::Shell("echo a     && echo b".into()))
    );
    assert_eq!(
        steps[1].directive,
        Directive::Run(Command::Shell("echo c".into()))
    );
}

#[test]
fn run_has_a_shell_form_and_an_exec_form() {
    let df = parse("FROM b\nRUN [\"echo\", \"a b\"]\nRUN [not json\n").unwrap();
    assert_eq!(
        df.stages[0].steps[0].directive,
        Directive::Run(Command::Exec(vec!["echo".into(), "a b".into()]))
    );
    assert_eq!(
        df.stages[0].steps[1].directive,
        Directive::Run(Command::Shell("[not json".into()))
    );
    assert!(matches!(
        parse("FROM b\nRUN --mount=type=cache,target=/x true"),
        Err(ParseError::Flag { line: 2, .. })
    ));
}

#[test]
fn copy_takes_from_chown_and_chmod() {
    let df = parse(
        "FROM b AS one\nCOPY --from=one --chown=1:2 --chmod=0755 a \"b c\" /dst/\nADD [\"x y\", \"/z\"]\n",
    )
    .unwrap();
    let Directive::Copy(copy) = &df.stages[0].steps[0].directive else {
        panic!("not a COPY")
    };
    assert_eq!(copy.from.as_deref(), Some("one"));
    assert_eq!(copy.chown.as_deref(), Some("1:2"));
    assert_eq!(copy.chmod.as_deref(), Some("0755"));
    assert_eq!(copy.sources, vec!["a".to_string(), "\"b c\"".to_string()]);
    assert_eq!(copy.dest, "/dst/");
    let Directive::Add(add) = &df.stages[0].steps[1].directive else {
        panic!("not an ADD")
    };
    assert!(add.exec_form);
    assert_eq!(add.sources, vec!["x y".to_string()]);
    assert!(matches!(
        parse("FROM b\nCOPY --exclude=x a b"),
        Err(ParseError::Flag { .. })
    ));
    assert!(matches!(
        parse("FROM b\nCOPY onlyone"),
        Err(ParseError::Missing { line: 2, .. })
    ));
}

#[test]
fn stages_have_names_and_global_args_come_first() {
    let df = parse("ARG V=1\nFROM a:${V} AS Build\nRUN x\nFROM scratch\nCOPY --from=build /o /o\n")
        .unwrap();
    assert_eq!(df.global_args.len(), 1);
    assert_eq!(df.stages.len(), 2);
    assert_eq!(df.stages[0].alias(), Some("build"));
    assert_eq!(df.stages[1].alias(), None);
    assert_eq!(df.step_count(), 5);
    assert_eq!(
        parse("RUN x\nFROM a"),
        Err(ParseError::BeforeFrom {
            line: 1,
            name: "RUN".into()
        })
    );
    assert_eq!(parse("ARG x\n"), Err(ParseError::NoFrom));
}

#[test]
fn unknown_directives_fail_and_known_ones_are_skipped() {
    let df = parse("FROM a\nCMD [\"x\"]\nexpose 80\nLABEL a=b\n").unwrap();
    let names: Vec<_> = df.stages[0]
        .steps
        .iter()
        .map(|s| s.directive.clone())
        .collect();
    assert_eq!(
        names,
        vec![
            Directive::Skipped("CMD".into()),
            Directive::Skipped("EXPOSE".into()),
            Directive::Skipped("LABEL".into())
        ]
    );
    assert_eq!(
        parse("FROM a\nFROBNICATE x"),
        Err(ParseError::Unknown {
            line: 2,
            name: "FROBNICATE".into()
        })
    );
}

#[test]
fn env_and_arg_forms() {
    let df = parse("FROM a\nENV A=1 B=\"two words\"\nENV OLD legacy form\nARG X Y=2\n").unwrap();
    let steps = &df.stages[0].steps;
    assert_eq!(
        steps[0].directive,
        Directive::Env(vec![
            ("A".into(), "1".into()),
            ("B".into(), "\"two words\"".into())
        ])
    );
    assert_eq!(
        steps[1].directive,
        Directive::Env(vec![("OLD".into(), "legacy form".into())])
    );
    assert_eq!(
        steps[2].directive,
        Directive::Arg(vec![("X".into(), None), ("Y".into(), Some("2".into()))])
    );
}

#[test]
fn substitution_follows_the_shell_rules_we_support() {
    let v = vars(&[("A", "x"), ("EMPTY", ""), ("P", "/usr/bin")]);
    assert_eq!(expand("$A/${A}y", &v).unwrap(), "x/xy");
    assert_eq!(expand("\"$A b\"", &v).unwrap(), "x b");
    assert_eq!(expand("'$A'", &v).unwrap(), "$A");
    assert_eq!(expand("\\$A", &v).unwrap(), "$A");
    assert_eq!(expand("${NOPE:-dflt}${A:-no}", &v).unwrap(), "dfltx");
    assert_eq!(expand("${EMPTY:+alt}${A:+alt}", &v).unwrap(), "alt");
    assert_eq!(expand("$P:/bin $", &v).unwrap(), "/usr/bin:/bin $");
    assert_eq!(expand("$NOPE", &v).unwrap(), "");
    assert!(expand("${NOPE:?must be set}", &v)
        .unwrap_err()
        .to_string()
        .contains("must be set"));
    assert!(expand("${A", &v).is_err());
    assert_eq!(substitute("a \"$A\"", &v).unwrap(), "a \"x\"");
}

#[test]
fn unterminated_quotes_are_errors() {
    assert!(matches!(
        parse("FROM a\nENV A=\"x\n"),
        Err(ParseError::Syntax { line: 2, .. })
    ));
}
