// Unit tests of the Jinja engine, one small template per feature.
#include <gtest/gtest.h>

#include "chat/chat_template.h"
#include "chat/jinja.h"
#include "uma/error.h"

namespace uma::jinja {
namespace {

Value sample_context() {
  Value ctx = Value::object();
  Value messages = Value::array();
  for (auto [role, content] : {std::pair{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}}) {
    Value m = Value::object();
    m.set("role", Value(role));
    m.set("content", Value(content));
    messages.push_back(m);
  }
  ctx.set("messages", messages);
  ctx.set("name", Value("uma"));
  ctx.set("n", Value(7));
  ctx.set("pi", Value(3.25));
  ctx.set("flag", Value(true));
  ctx.set("nothing", Value(nullptr));
  return ctx;
}

std::string render(const std::string& source, const Value& ctx = sample_context()) {
  return Template(source).render(ctx);
}

std::string error_of(const std::string& source) {
  try {
    render(source);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(JinjaTest, TextAndOutput) {
  EXPECT_EQ(render("Hello {{ name }}!"), "Hello uma!");
  EXPECT_EQ(render("{{ n }} {{ pi }} {{ flag }} [{{ nothing }}] [{{ missing }}]"), "7 3.25 true [] []");
  EXPECT_EQ(render("{{ 2.0 }} {{ [1, 'a'] }} {{ {'k': none} }}"), "2.0 [1, \"a\"] {\"k\": null}");
  EXPECT_EQ(render("a\n"), "a");  // one trailing newline is dropped
}

TEST(JinjaTest, Comments) { EXPECT_EQ(render("a{# note #}b{#- x -#}  c"), "abc"); }

TEST(JinjaTest, WhitespaceControl) {
  EXPECT_EQ(render("a  {{- 'b' -}}  c"), "abc");
  EXPECT_EQ(render("a  {%- if true -%}  b  {%- endif -%}  c"), "abc");
  // trim_blocks: newline after a block tag is removed; lstrip_blocks: indentation before it too.
  EXPECT_EQ(render("{% if true %}\n  x\n  {% endif %}\ny"), "  x\ny");
  EXPECT_EQ(render("  {{ 'v' }}\n"), "  v");
  EXPECT_EQ(render("{%+ if true %}x{% endif +%}\ny"), "x\ny");
}

TEST(JinjaTest, IfElifElse) {
  const char* t = "{% if n > 10 %}big{% elif n > 5 %}mid{% else %}small{% endif %}";
  EXPECT_EQ(render(t), "mid");
  EXPECT_EQ(render("{% if missing %}x{% else %}y{% endif %}"), "y");
}

TEST(JinjaTest, ForLoop) {
  EXPECT_EQ(render("{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ m.role[0] }}"
                   "{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %}{{ loop.length }},{% endfor %}"),
            "10sF3,21u3,32aL3,");
  EXPECT_EQ(render("{% for m in messages %}{{ loop.previtem.role }}>{{ loop.nextitem.role }};{% endfor %}"),
            ">user;system>assistant;user>;");
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for t in tools %}x{% else %}no tools{% endfor %}"), "no tools");  // undefined: empty, as in Python
  EXPECT_EQ(render("{% for m in messages if m.role != 'system' %}{{ m.role }}{{ loop.index }} {% endfor %}"),
            "user1 assistant2 ");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"), "a=1;b=2;");
  EXPECT_EQ(render("{% for k in {'b': 1, 'a': 2} %}{{ k }}{% endfor %}"), "ba");
  EXPECT_EQ(render("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}"
                   "{% endif %}{{ i }}{% endfor %}"),
            "02");
}

TEST(JinjaTest, SetAndNamespace) {
  EXPECT_EQ(render("{% set x = 3 %}{% set y = x * 2 %}{{ y }}"), "6");
  EXPECT_EQ(render("{% set a, b = [1, 2] %}{{ b }}{{ a }}"), "21");
  EXPECT_EQ(render("{% set s %}in {{ name }}{% endset %}[{{ s }}]"), "[in uma]");
  // A plain set inside a loop does not leak; a namespace attribute does.
  EXPECT_EQ(render("{% set c = 0 %}{% set ns = namespace(c=0) %}{% for m in messages %}{% set c = c + 1 %}"
                   "{% set ns.c = ns.c + 1 %}{% endfor %}{{ c }} {{ ns.c }}"),
            "0 3");
}

TEST(JinjaTest, Macros) {
  EXPECT_EQ(render("{% macro greet(who, punct='!') %}Hi {{ who }}{{ punct }}{% endmacro %}"
                   "{{ greet('a') }} {{ greet('b', punct='?') }} {{ greet(who='c') }}"),
            "Hi a! Hi b? Hi c!");
  EXPECT_EQ(render("{% macro box() %}[{{ caller() }}]{% endmacro %}{% call box() %}in{% endcall %}"), "[in]");
  EXPECT_EQ(render("{% filter upper %}abc {{ name }}{% endfilter %}"), "ABC UMA");
}

TEST(JinjaTest, Operators) {
  EXPECT_EQ(render("{{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 2 ** 10 }} {{ 1 + 2 * 3 }}"),
            "3.5 3 -4 1 1024 7");
  EXPECT_EQ(render("{{ 'a' ~ 1 ~ 'b' }} {{ 'ab' + 'cd' }} {{ [1] + [2] }} {{ 'x' * 3 }}"), "a1b abcd [1, 2] xxx");
  EXPECT_EQ(render("{{ 'a' in 'cat' }} {{ 'z' not in ['z'] }} {{ 'role' in messages[0] }}"), "true false true");
  EXPECT_EQ(render("{{ 1 < 2 and 2 <= 2 or false }} {{ not flag }} {{ 3 == 3.0 }} {{ 'a' != 'b' }}"),
            "true false true true");
  EXPECT_EQ(render("{{ 'y' if flag else 'n' }}{{ 'y' if missing else 'n' }}[{{ 'y' if missing }}]"), "yn[]");
  EXPECT_EQ(render("{{ none or 'd' }} {{ 'a' and 'b' }}"), "d b");
  // `str + non-str` concatenates the rendered forms (as HF's JavaScript engine does; Python would raise).
  EXPECT_EQ(render("{{ 'n=' + 1 }} {{ 'args=' + {'a': 1} }}"), "n=1 args={\"a\": 1}");
}

TEST(JinjaTest, Subscripts) {
  EXPECT_EQ(render("{{ messages[-1].content }} {{ messages[0]['role'] }} {{ 'hello'[1:3] }} {{ 'abc'[::-1] }}"),
            "Hello! system el cba");
  EXPECT_EQ(render("{{ [1, 2, 3, 4][1:] }} {{ [1, 2, 3, 4][:-2] }} {{ [1, 2, 3, 4][::2] }}"), "[2, 3, 4] [1, 2] [1, 3]");
  EXPECT_EQ(render("[{{ messages[9] }}][{{ missing.attr.deeper }}][{{ nothing.x }}]"), "[][][]");
}

TEST(JinjaTest, Tests) {
  EXPECT_EQ(render("{{ name is defined }}{{ missing is undefined }}{{ nothing is none }}{{ name is string }}"
                   "{{ messages[0] is mapping }}{{ messages is iterable }}{{ messages is sequence }}{{ n is number }}"
                   "{{ flag is boolean }}{{ n is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ n is eq 7 }}"
                   "{{ 'a' is in 'abc' }}{{ flag is true }}{{ flag is false }}{{ name is not none }}"),
            "truetruetruetruetruetruetruetruetruetruetruetruetruetruetruefalsetrue");
  EXPECT_EQ(render("{{ namespace(a=1) is mapping }} {{ n is string }}"), "false false");
}

TEST(JinjaTest, Filters) {
  EXPECT_EQ(render("{{ '  x  '|trim }}|{{ 'ab'|upper }}|{{ 'AB'|lower }}|{{ 'hello world'|title }}|{{ 'hELLO'|capitalize }}"),
            "x|AB|ab|Hello World|Hello");
  EXPECT_EQ(render("{{ messages|length }} {{ 'héllo'|length }} {{ 'a-b-c'|replace('-', '+') }} {{ [1, 2]|join(', ') }}"),
            "3 5 a+b+c 1, 2");
  EXPECT_EQ(render("{{ missing|default('d') }} {{ ''|default('d', true) }} {{ name|d('x') }}"), "d d uma");
  EXPECT_EQ(render("{{ messages|first|attr('role') }} {{ (messages|last).role }} {{ {'a': 1}|items|list }}"),
            "system assistant [[\"a\", 1]]");
  EXPECT_EQ(render("{{ messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|list }}"), "[\"Hi\"]");
  EXPECT_EQ(render("{{ messages|rejectattr('role', 'eq', 'user')|map(attribute='role')|join(',') }}"),
            "system,assistant");
  EXPECT_EQ(render("{{ ['a', 'b']|map('upper')|list }} {{ [0, 1, 2]|select('odd')|list }}"), "[\"A\", \"B\"] [1]");
  EXPECT_EQ(render("{{ 42|string ~ '!' }} {{ '12'|int + 1 }} {{ 'x'|int }} {{ '2.5'|float }} {{ 3|float }}"),
            "42! 13 0 2.5 3.0");
  EXPECT_EQ(render("{{ 3.14159|round(2) }} {{ 2.5|round }} {{ -3|abs }} {{ [3, 1, 3, 2]|unique|list }}"),
            "3.14 3.0 3 [3, 1, 2]");
  EXPECT_EQ(render("{{ [3, 1, 2]|sort }} {{ [3, 1, 2]|sort(reverse=true) }} {{ {'b': 1, 'a': 2}|dictsort }}"),
            "[1, 2, 3] [3, 2, 1] [[\"a\", 2], [\"b\", 1]]");
  EXPECT_EQ(render("{{ 'a\nb\n\nc'|indent(2) }}|{{ 'a\nb'|indent(2, true) }}"), "a\n  b\n\n  c|  a\n  b");
  EXPECT_EQ(render("{{ 'one two  three'|wordcount }} {{ '<a & b>'|escape }} {{ '<b>'|safe }}"),
            "3 &lt;a &amp; b&gt; <b>");
  EXPECT_EQ(render("{{ [1, 2, 3]|reverse|list }} {{ [1, 2, 3]|sum }} {{ [4, 2, 8]|max }}"), "[3, 2, 1] 6 8");
}

TEST(JinjaTest, ToJson) {
  EXPECT_EQ(render("{{ {'a': [1, 2.5, 'x\"y\n'], 'b': none, 'c': true, 'é': 'ü'}|tojson }}"),
            "{\"a\": [1, 2.5, \"x\\\"y\\n\"], \"b\": null, \"c\": true, \"é\": \"ü\"}");
  EXPECT_EQ(render("{{ {'a': [1, {}], 'b': []}|tojson(indent=2) }}"),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}");
}

TEST(JinjaTest, StringMethods) {
  EXPECT_EQ(render("{{ ' x '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '  a'.lstrip() }}|{{ 'a\n'.rstrip() }}"),
            "x|a|a|a");
  EXPECT_EQ(render("{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a/b/c'.rsplit('/', 1) }} {{ 'a,b,c'.split(',', 1) }}"),
            "[\"a\", \"b\", \"\", \"c\"] [\"a\", \"b\"] [\"a/b\", \"c\"] [\"a\", \"b,c\"]");
  EXPECT_EQ(render("{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'aXa'.replace('a', 'b') }}"),
            "true true bXb");
  EXPECT_EQ(render("{{ 'ab'.upper() }} {{ 'AB'.lower() }} {{ 'a b'.title() }} {{ 'abcb'.find('b') }} "
                   "{{ 'abcb'.count('b') }} {{ '{} and {}'.format(1, 'x') }}"),
            "AB ab A B 1 2 1 and x");
}

TEST(JinjaTest, ListAndDictMethods) {
  EXPECT_EQ(render("{% set l = [1] %}{% set _ = l.append(2) %}{{ l }} {{ l.index(2) }} {{ l.pop(0) }} {{ l }}"),
            "[1, 2] 1 1 [2]");
  EXPECT_EQ(render("{% set d = {'a': 1, 'b': 2} %}{{ d.keys()|list }} {{ d.values()|list }} {{ d.get('a') }} "
                   "{{ d.get('z', 'dflt') }} [{{ d.get('z') }}]"),
            "[\"a\", \"b\"] [1, 2] 1 dflt []");
}

TEST(JinjaTest, Globals) {
  EXPECT_EQ(render("{{ range(3)|list }} {{ range(1, 7, 2)|list }}"), "[0, 1, 2] [1, 3, 5]");
  EXPECT_EQ(render("{{ strftime_now('%Y')|length }}"), "4");
  EXPECT_EQ(error_of("{{ raise_exception('Only user and assistant roles are supported!') }}"),
            "Only user and assistant roles are supported!");
}

TEST(JinjaTest, SyntaxErrorsHaveLineAndColumn) {
  EXPECT_NE(error_of("line1\n{% if x %}never closed").find("line 2"), std::string::npos);
  EXPECT_NE(error_of("{{ 1 + }}").find("line 1, column 8"), std::string::npos);
  EXPECT_NE(error_of("{% frobnicate %}").find("unknown statement 'frobnicate'"), std::string::npos);
  EXPECT_NE(error_of("a\n\n  {{ 'x'|nosuchfilter }}").find("line 3"), std::string::npos);
  EXPECT_NE(error_of("{{ undefined_fn() }}").find("'undefined_fn' is undefined"), std::string::npos);
}

TEST(JinjaTest, ParseOnceRenderMany) {
  Template t("{{ greeting }}, {{ who }}");
  Value a = Value::object();
  a.set("greeting", Value("hi"));
  a.set("who", Value("a"));
  Value b = Value::object();
  b.set("greeting", Value("yo"));
  b.set("who", Value("b"));
  EXPECT_EQ(t.render(a), "hi, a");
  EXPECT_EQ(t.render(b), "yo, b");
  b.set("who", Value(size_t{3}));
  EXPECT_EQ(t.render(b), "yo, 3");
}

TEST(JinjaTest, RenderChatTemplate) {
  const std::string tmpl =
      "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}"
      "{% if add_generation_prompt %}<|assistant|>{% endif %}";
  Value messages = chat_messages({{"user", "Hi"}});
  EXPECT_EQ(render_chat_template(tmpl, messages, true, "<s>", "</s>"), "<s><|user|>Hi</s><|assistant|>");
  ChatTemplate parsed(tmpl, "<s>", "</s>");
  EXPECT_EQ(parsed.render(messages, false), "<s><|user|>Hi</s>");
}

}  // namespace
}  // namespace uma::jinja
