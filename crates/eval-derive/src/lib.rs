//! `#[derive(Options)]`: a struct whose fields are module options.
//!
//! The derive is re-exported as `bigtop_eval::Options`; its documentation
//! (what it generates, every attribute) is there. This crate only turns
//! the struct into the trait implementations and the key struct.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{parse_macro_input, Data, DeriveInput, Expr, Fields, LitStr};

/// Derives `OptionValue` (and the key struct `<Name>Key`) for a struct of
/// options. See `bigtop_eval::Options`.
#[proc_macro_derive(Options, attributes(option, options))]
pub fn derive_options(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// What `#[option(…)]` says about a field.
#[derive(Default)]
struct FieldAttrs {
    default: Option<Expr>,
    ty: Option<Expr>,
    example: Option<Expr>,
    apply: Option<Expr>,
    rename: Option<LitStr>,
    default_text: Option<LitStr>,
    default_key: bool,
    read_only: bool,
    internal: bool,
    required: bool,
}

impl FieldAttrs {
    fn parse(attrs: &[syn::Attribute]) -> syn::Result<FieldAttrs> {
        let mut out = FieldAttrs::default();
        for a in attrs.iter().filter(|a| a.path().is_ident("option")) {
            a.parse_nested_meta(|meta| {
                let p = &meta.path;
                if p.is_ident("default") {
                    out.default = Some(meta.value()?.parse()?);
                } else if p.is_ident("ty") {
                    out.ty = Some(meta.value()?.parse()?);
                } else if p.is_ident("example") {
                    out.example = Some(meta.value()?.parse()?);
                } else if p.is_ident("apply") {
                    out.apply = Some(meta.value()?.parse()?);
                } else if p.is_ident("rename") {
                    out.rename = Some(meta.value()?.parse()?);
                } else if p.is_ident("default_text") {
                    out.default_text = Some(meta.value()?.parse()?);
                } else if p.is_ident("default_key") {
                    out.default_key = true;
                } else if p.is_ident("read_only") {
                    out.read_only = true;
                } else if p.is_ident("internal") {
                    out.internal = true;
                } else if p.is_ident("required") {
                    out.required = true;
                } else {
                    return Err(meta.error(
                        "unknown option attribute; expected one of default, ty, example, apply, \
                         rename, default_text, default_key, read_only, internal, required",
                    ));
                }
                Ok(())
            })?;
        }
        if out.required && (out.default.is_some() || out.default_key) {
            return Err(syn::Error::new(
                attrs[0].span(),
                "`required` and a default contradict each other",
            ));
        }
        Ok(out)
    }

    /// Whether the field must be declared as one option of its own (a
    /// struct of options with any of these is no longer a group of
    /// fields but a single submodule option).
    fn whole(&self) -> bool {
        self.default.is_some()
            || self.ty.is_some()
            || self.apply.is_some()
            || self.read_only
            || self.internal
            || self.default_key
            || self.required
            || self.example.is_some()
            || self.default_text.is_some()
    }
}

/// The doc comment of a field, as an option description.
fn doc(attrs: &[syn::Attribute]) -> String {
    let mut lines = Vec::new();
    for a in attrs.iter().filter(|a| a.path().is_ident("doc")) {
        if let syn::Meta::NameValue(nv) = &a.meta {
            if let Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = &nv.value
            {
                let v = s.value();
                lines.push(v.strip_prefix(' ').unwrap_or(&v).to_owned());
            }
        }
    }
    lines.join("\n").trim().to_owned()
}

/// The path of `bigtop-eval` in the crate being compiled: `bigtop_eval`
/// where it is a dependency (or is the crate), `bigtop::eval` where only
/// the facade is; `#[options(crate = "path")]` on the struct says it
/// outright (a renamed dependency).
fn crate_path(input: &DeriveInput) -> syn::Result<Tokens> {
    for a in input.attrs.iter().filter(|a| a.path().is_ident("options")) {
        let mut found = None;
        a.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                let s: LitStr = meta.value()?.parse()?;
                found = Some(s.parse::<syn::Path>()?);
                Ok(())
            } else {
                Err(meta.error("unknown options attribute; expected `crate = \"path\"`"))
            }
        })?;
        if let Some(p) = found {
            return Ok(quote!(#p));
        }
    }
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .ok()
        .and_then(|d| std::fs::read_to_string(std::path::Path::new(&d).join("Cargo.toml")).ok());
    let own = std::env::var("CARGO_PKG_NAME").unwrap_or_default();
    Ok(if uses_facade_only(&own, manifest.as_deref()) {
        quote!(::bigtop::eval)
    } else {
        quote!(::bigtop_eval)
    })
}

/// Whether the crate `own`, whose manifest reads `manifest`, reaches
/// bigtop-eval only through the `bigtop` facade.
fn uses_facade_only(own: &str, manifest: Option<&str>) -> bool {
    if own == "bigtop-eval" {
        return false;
    }
    let Some(text) = manifest else {
        return false;
    };
    let names_dep = |name: &str| {
        text.lines().any(|l| {
            let l = l.trim_start();
            l.strip_prefix(name)
                .is_some_and(|rest| rest.trim_start().starts_with(['=', '.']))
        })
    };
    !names_dep("bigtop-eval") && (names_dep("bigtop") || own == "bigtop")
}

fn expand(input: &DeriveInput) -> syn::Result<Tokens> {
    let name = &input.ident;
    let vis = &input.vis;
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(
            input.generics.span(),
            "#[derive(Options)] does not take generic parameters",
        ));
    }
    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(f) => &f.named,
            _ => {
                return Err(syn::Error::new(
                    input.span(),
                    "#[derive(Options)] needs a struct with named fields",
                ))
            }
        },
        _ => {
            return Err(syn::Error::new(
                input.span(),
                "#[derive(Options)] needs a struct with named fields",
            ))
        }
    };
    let krate = crate_path(input)?;
    let m = quote!(#krate::module);
    let key_name = format_ident!("{}Key", name);

    let mut key_fields = Vec::new();
    let mut key_inits = Vec::new();
    let mut reads = Vec::new();
    let mut reads_ref = Vec::new();
    let mut writes = Vec::new();
    let mut sub_decls = Vec::new();
    let mut decls = Vec::new();
    for f in fields {
        let ident = f.ident.as_ref().expect("named field");
        let fty = &f.ty;
        let attrs = FieldAttrs::parse(&f.attrs)?;
        let oname = match &attrs.rename {
            Some(r) => r.value(),
            None => ident.to_string().trim_start_matches("r#").to_owned(),
        };
        let description = doc(&f.attrs);
        let key_doc = format!("The key of the option `{oname}`.");
        key_fields.push(quote! {
            #[doc = #key_doc]
            pub #ident: <#fty as #m::OptionValue>::Key
        });
        key_inits.push(quote! {
            #ident: #m::Key::at(#m::join(__bigtop_path, #oname))
        });
        reads.push(quote! { #ident: #m::take_field(&mut __bigtop_map, #oname)? });
        reads_ref.push(quote! { #ident: #m::field_ref(__bigtop_map, #oname)? });
        writes.push(quote! {
            __bigtop_map.insert(::std::string::ToString::to_string(#oname), #m::IntoValue::into_value(self.#ident));
        });

        // What configures the declaration, in both forms.
        let mut configure = Vec::new();
        if !description.is_empty() {
            configure.push(quote! { __bigtop_o.description(#description); });
        }
        if let Some(d) = &attrs.default {
            // Checked against the field's type at compile time.
            configure.push(quote_spanned! {d.span()=>
                __bigtop_o.default(#m::ValueOf::<#fty>::into_typed(#d));
            });
        }
        if let Some(t) = &attrs.default_text {
            configure.push(quote! { __bigtop_o.default_text(#t); });
        }
        if attrs.default_key {
            configure.push(quote! { __bigtop_o.default_key(); });
        }
        if let Some(x) = &attrs.example {
            configure.push(quote_spanned! {x.span()=>
                __bigtop_o.example(#m::ValueOf::<#fty>::into_typed(#x));
            });
        }
        if let Some(a) = &attrs.apply {
            configure.push(quote_spanned! {a.span()=> __bigtop_o.apply::<#fty, #fty, _>(#a); });
        }
        if attrs.read_only {
            configure.push(quote! { __bigtop_o.read_only(); });
        }
        if attrs.internal {
            configure.push(quote! { __bigtop_o.internal(); });
        }
        let implicit = if attrs.default.is_some() || attrs.default_key || attrs.required {
            quote!()
        } else {
            quote! {
                if let ::std::option::Option::Some(__bigtop_v) =
                    <#fty as #m::OptionValue>::implicit_default()
                {
                    __bigtop_o.default(__bigtop_v);
                }
            }
        };
        let ty = match &attrs.ty {
            Some(t) => quote!(#t),
            None => quote!(<#fty as #m::OptionValue>::option_type()),
        };
        sub_decls.push(quote! {
            __bigtop_s.option(#oname, #ty, |__bigtop_o| { #implicit #(#configure)* });
        });
        decls.push(if attrs.whole() {
            quote! {
                __bigtop_m.option(#m::join(__bigtop_path, #oname), #ty, |__bigtop_o| { #implicit #(#configure)* });
            }
        } else {
            quote! {
                <#fty as #m::OptionValue>::declare(__bigtop_m, #m::join(__bigtop_path, #oname), &|__bigtop_o| { #(#configure)* });
            }
        });
    }

    let at_doc = format!(
        "The key of the struct of options `{name}` at `path` (its options are declared there by `ModuleBuilder::options`)."
    );
    let key_struct_doc = format!("The typed keys of the options of `{name}`, at one path.");
    let name_str = name.to_string();
    Ok(quote! {
        #[doc = #key_struct_doc]
        #[derive(Clone, Copy, Debug)]
        #vis struct #key_name {
            __bigtop_path: &'static str,
            #(#key_fields,)*
        }

        impl #m::Key for #key_name {
            type Value = #name;
            fn at(__bigtop_path: &'static str) -> Self {
                #key_name { __bigtop_path, #(#key_inits,)* }
            }
            fn path(&self) -> &'static str {
                self.__bigtop_path
            }
        }

        impl #name {
            #[doc = #at_doc]
            #vis fn at(__bigtop_path: &str) -> #key_name {
                <#key_name as #m::Key>::at(#m::intern(__bigtop_path))
            }
        }

        impl #m::FromValue for #name {
            fn from_value(__bigtop_v: #m::Value) -> ::std::result::Result<Self, ::std::string::String> {
                match __bigtop_v {
                    #m::Value::Map(mut __bigtop_map) => ::std::result::Result::Ok(#name { #(#reads,)* }),
                    __bigtop_other => ::std::result::Result::Err(#m::not_a_struct(#name_str, &__bigtop_other)),
                }
            }
            fn from_value_ref(__bigtop_v: &#m::Value) -> ::std::result::Result<Self, ::std::string::String> {
                match __bigtop_v {
                    #m::Value::Map(__bigtop_map) => ::std::result::Result::Ok(#name { #(#reads_ref,)* }),
                    __bigtop_other => ::std::result::Result::Err(#m::not_a_struct(#name_str, __bigtop_other)),
                }
            }
        }

        impl #m::IntoValue for #name {
            fn into_value(self) -> #m::Value {
                let mut __bigtop_map = ::std::collections::BTreeMap::new();
                #(#writes)*
                #m::Value::Map(__bigtop_map)
            }
        }

        #krate::__defines_itself!(#name);

        impl #m::Keyed for #name {}

        impl #m::OptionValue for #name {
            type Key = #key_name;
            fn option_type() -> #m::types::Type {
                #m::types::submodule(|__bigtop_s| { #(#sub_decls)* })
            }
            fn implicit_default() -> ::std::option::Option<#m::Value> {
                ::std::option::Option::Some(#m::Value::Map(::std::collections::BTreeMap::new()))
            }
            #[track_caller]
            fn declare(
                __bigtop_m: &mut #m::ModuleBuilder,
                __bigtop_path: &str,
                _configure: &dyn Fn(&mut #m::OptionDecl),
            ) {
                #(#decls)*
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::uses_facade_only;

    #[test]
    fn the_facade_path_is_used_only_where_bigtop_eval_is_not_a_dependency() {
        let facade = "[dependencies]\nbigtop = { path = \"../bigtop\" }\nserde = \"1\"\n";
        let both = "[dependencies]\nbigtop = \"0.1\"\nbigtop-eval = { workspace = true }\n";
        let eval = "[dependencies]\nbigtop-eval.workspace = true\n";
        let neither = "[dependencies]\nbigtop-evaluator = \"1\"\n";
        assert!(uses_facade_only("app", Some(facade)));
        assert!(!uses_facade_only("app", Some(both)));
        assert!(!uses_facade_only("app", Some(eval)));
        assert!(!uses_facade_only("app", Some(neither)));
        assert!(!uses_facade_only("bigtop-eval", Some(facade)));
        assert!(!uses_facade_only("app", None));
    }
}
