%% A restricted peer's node trying to fill b's atom table (tests/firewall.rs):
%% fresh atoms in seeded random shapes, in messages the policy lets through
%% (to the listed cache: lists, tuples, map keys, node names of pids and
%% references, modules of funs, a cast) and in operations it refuses
%% (sends to unlisted names, monitors of them: their atom cache headers
%% still reach b's node).
-module(fw_atoms).
-export([run/4, exports/3]).

%% Sends at least N fresh atoms to node B, up to Per in one message.
run(Seed, N, Per, B) ->
    rand:seed(exsss, {Seed, Seed bxor 16#5bd1e995, 7}),
    run(Seed, N, Per, B, 0, 0).

run(_Seed, N, _Per, _B, Sent, Msgs) when Sent >= N -> {sent, Sent, Msgs};
run(Seed, N, Per, B, Sent, Msgs) ->
    K = rand:uniform(Per),
    As = [fresh(Seed, Sent + I) || I <- lists:seq(1, K)],
    send(rand:uniform(10), As, B),
    run(Seed, N, Per, B, Sent + K, Msgs + 1).

fresh(Seed, I) -> list_to_atom("fa" ++ integer_to_list(Seed) ++ "_" ++ integer_to_list(I) ++ "@x").

send(1, As, B) -> {cache, B} ! {put, atoms, As};
send(2, As, B) -> {cache, B} ! {put, atoms, list_to_tuple(As)};
send(3, As, B) -> {cache, B} ! {put, atoms, maps:from_list([{A, 1} || A <- As])};
send(4, As, B) -> {cache, B} ! {put, atoms, [pid_of(A) || A <- As]};
send(5, As, B) -> {cache, B} ! {put, atoms, [ref_of(A) || A <- As]};
send(6, As, B) -> {cache, B} ! {put, atoms, [erlang:make_fun(A, f, 0) || A <- As]};
send(7, As, B) -> {nobody, B} ! As;
send(8, As, B) -> [{A, B} ! x || A <- As], ok;
send(9, As, B) -> [erlang:demonitor(erlang:monitor(process, {A, B}), [flush]) || A <- As], ok;
send(10, As, B) -> gen_server:cast({cache, B}, {put, atoms, As}).

pid_of(A) ->
    N = atom_to_binary(A),
    binary_to_term(<<131, 88, 119, (byte_size(N)), N/binary, 1:32, 0:32, 1:32>>).

ref_of(A) ->
    N = atom_to_binary(A),
    binary_to_term(<<131, 90, 3:16, 119, (byte_size(N)), N/binary, 1:32, 1:32, 2:32, 3:32>>).

%% Exports: each `fun M:F/A` b decodes is an export entry it never frees
%% (a full export table, 524 288, halts it). Msgs messages to the cache of
%% 256 exports each, all of one module, a new function per message: few
%% atoms, many exports.
exports(Seed, Msgs, B) ->
    M = list_to_atom("fm" ++ integer_to_list(Seed)),
    [{cache, B} ! {put, exports, [erlang:make_fun(M, list_to_atom("f" ++ integer_to_list(I)), A) || A <- lists:seq(0, 255)]}
     || I <- lists:seq(1, Msgs)],
    {sent, Msgs * 256}.
