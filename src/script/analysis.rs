//! What can be known about a project's scripts without running them: calls
//! to functions nothing defines (in the file, a `lib/` module, the host or
//! Rhai), and answer maps with keys the Command API does not know.
//!
//! Rhai resolves function calls only when they run, so without this pass a
//! misspelt helper, or one defined in another `events/` file, is found by
//! the first user who taps. This module reads compiled ASTs only; it does
//! not compile, run or report.

use std::collections::{BTreeMap, HashSet};

use rhai::{AST, ASTNode, Engine, Expr, Position, Stmt};

/// One finding, placed in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Finding {
    fn at(position: Position, message: String) -> Finding {
        Finding {
            line: position.line().unwrap_or(0),
            column: position.position().unwrap_or(0),
            message,
        }
    }
}

/// Rhai's keywords that are called like functions but are not registered
/// as functions on the engine.
const KEYWORD_FUNCTIONS: &[&str] = &[
    "print",
    "debug",
    "type_of",
    "Fn",
    "call",
    "curry",
    "is_shared",
    "is_def_var",
    "is_def_fn",
];

/// The callbacks whose answer goes through the Command API decoder.
const ANSWERING_CALLBACKS: &[&str] = &[
    "userCommand",
    "sessionStartup",
    "pageStartup",
    "sessionRestored",
    "message",
    "keystroke",
    "barcode",
    "nfc",
    "accelerometer",
    "bluetooth",
    "formSubmission",
];

/// What every file of a project can call: the engine's functions and the
/// `lib/` modules with the functions each exports.
pub struct Callable {
    engine_functions: HashSet<String>,
    /// Module name → `name/arity` of its public functions.
    modules: BTreeMap<String, HashSet<String>>,
}

impl Callable {
    /// The functions registered on `engine` (host functions and Rhai's
    /// standard library) and the given modules.
    pub fn new(engine: &Engine, modules: BTreeMap<String, HashSet<String>>) -> Callable {
        let engine_functions = engine
            .collect_fn_metadata(None, |info| Some(info.metadata.name.to_string()), true)
            .into_iter()
            .chain(KEYWORD_FUNCTIONS.iter().map(|k| (*k).to_string()))
            .collect();
        Callable {
            engine_functions,
            modules,
        }
    }
}

/// `name/arity`, the key Rhai looks script functions up by.
pub fn function_key(name: &str, arity: usize) -> String {
    format!("{name}/{arity}")
}

/// The problems found in one file's AST: errors (calls that cannot
/// work) and warnings (unknown answer keys).
#[derive(Debug, Default)]
pub struct Report {
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

/// Checks one compiled file against what it can call. `answer_keys` are the
/// keys the Command API decoder understands.
pub fn check_file(ast: &AST, callable: &Callable, answer_keys: &[&str]) -> Report {
    let own: HashSet<String> = ast
        .iter_functions()
        .map(|f| function_key(f.name, f.params.len()))
        .collect();
    let own_names: HashSet<&str> = ast.iter_functions().map(|f| f.name).collect();
    let mut variables: HashSet<String> = ast
        .iter_functions()
        .flat_map(|f| f.params.into_iter().map(String::from))
        .collect();
    let mut report = Report::default();
    ast.walk(&mut |path: &[ASTNode]| {
        if let Some(ASTNode::Stmt(Stmt::Var(var, ..))) = path.last() {
            variables.insert(var.0.name.to_string());
        }
        true
    });
    ast.walk(&mut |path: &[ASTNode]| {
        let (call, position) = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, position))) => (call, position),
            Some(ASTNode::Stmt(Stmt::FnCall(call, position))) => (call, position),
            _ => return true,
        };
        if call.op_token.is_some() {
            return true;
        }
        let arity = call.args.len();
        let name = call.name.as_str();
        if call.namespace.is_empty() {
            if own.contains(&function_key(name, arity))
                || callable.engine_functions.contains(name)
                || variables.contains(name)
            {
                return true;
            }
            let message = if own_names.contains(name) {
                format!(
                    "`{name}` is called with {arity} argument(s), but this file defines it with another number"
                )
            } else {
                format!(
                    "no function `{name}` with {arity} argument(s): functions are seen only in the file that defines them; put shared ones in a lib/ module and call them as `module::{name}(…)`"
                )
            };
            report.errors.push(Finding::at(*position, message));
            return true;
        }
        let module = call.namespace.root();
        match callable.modules.get(module) {
            Some(functions) if functions.contains(&function_key(name, arity)) => {}
            Some(_) => report.errors.push(Finding::at(
                *position,
                format!("lib/{module}.rhai has no public function `{name}` with {arity} argument(s)"),
            )),
            None => report.errors.push(Finding::at(
                *position,
                format!("no module `{module}`: modules are the files lib/<name>.rhai"),
            )),
        }
        true
    });
    let callbacks: Vec<(String, usize)> = ast
        .iter_functions()
        .filter(|f| ANSWERING_CALLBACKS.contains(&f.name))
        .map(|f| (f.name.to_string(), f.params.len()))
        .collect();
    for (name, arity) in callbacks {
        // `retain_functions` on a copy: rhai's `clone_functions_only_filtered`
        // keeps every function when it starts from an empty module.
        let mut callback = ast.clone_functions_only();
        callback.retain_functions(|_, _, n, a| n == name && a == arity);
        check_answers(&callback, answer_keys, &mut report);
    }
    check_sent_actions(ast, answer_keys, &mut report);
    report
}

/// Warns about unknown keys of the maps a callback answers with: those in
/// `return`, and the value it ends with. `callback` holds the one function.
fn check_answers(callback: &AST, answer_keys: &[&str], report: &mut Report) {
    let mut last: Option<Stmt> = None;
    callback.walk(&mut |path: &[ASTNode]| {
        if let [ASTNode::Stmt(statement)] = path {
            last = Some((*statement).clone());
        }
        if let Some(ASTNode::Stmt(Stmt::Return(Some(expr), ..))) = path.last() {
            check_answer_expr(expr, answer_keys, report);
        }
        true
    });
    if let Some(last) = &last {
        check_answer_stmt(last, answer_keys, report);
    }
}

fn check_answer_stmt(statement: &Stmt, answer_keys: &[&str], report: &mut Report) {
    match statement {
        Stmt::Expr(expr) => check_answer_expr(expr, answer_keys, report),
        Stmt::If(flow, _) => {
            for block in [&flow.body, &flow.branch] {
                if let Some(last) = block.statements().last() {
                    check_answer_stmt(last, answer_keys, report);
                }
            }
        }
        Stmt::Block(block) => {
            if let Some(last) = block.statements().last() {
                check_answer_stmt(last, answer_keys, report);
            }
        }
        Stmt::Switch(switch, _) => {
            for case in &switch.1.expressions {
                check_answer_expr(&case.rhs, answer_keys, report);
            }
        }
        _ => {}
    }
}

fn check_answer_expr(expr: &Expr, answer_keys: &[&str], report: &mut Report) {
    match expr {
        Expr::Map(map, position) => {
            // The keys are in the template map; the list has the ones whose
            // value is computed, with their positions.
            for key in map.1.keys() {
                if !answer_keys.contains(&key.as_str()) {
                    let place = map
                        .0
                        .iter()
                        .find(|(ident, _)| ident.name == key.as_str())
                        .map_or(*position, |(ident, _)| ident.pos);
                    report.warnings.push(unknown_key(key, place));
                }
            }
        }
        Expr::DynamicConstant(value, position) => {
            if let Some(map) = value.read_lock::<rhai::Map>() {
                for key in map.keys() {
                    if !answer_keys.contains(&key.as_str()) {
                        report.warnings.push(unknown_key(key, *position));
                    }
                }
            }
        }
        Expr::Stmt(block) => {
            if let Some(last) = block.statements().last() {
                check_answer_stmt(last, answer_keys, report);
            }
        }
        _ => {}
    }
}

/// `sendActions(session, #{ … })` anywhere in the file.
fn check_sent_actions(ast: &AST, answer_keys: &[&str], report: &mut Report) {
    let mut found = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        let call = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, _))) => call,
            Some(ASTNode::Stmt(Stmt::FnCall(call, _))) => call,
            _ => return true,
        };
        if call.name == "sendActions"
            && call.namespace.is_empty()
            && let Some(answer) = call.args.get(1)
        {
            found.push(answer.clone());
        }
        true
    });
    for answer in &found {
        check_answer_expr(answer, answer_keys, report);
    }
}

fn unknown_key(key: &str, position: Position) -> Finding {
    Finding::at(
        position,
        format!("answer key `{key}` is not part of the Command API and will be ignored"),
    )
}
