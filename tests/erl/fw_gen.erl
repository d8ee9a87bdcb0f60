%% A restricted peer that knows OTP's kernel, generated: thousands of
%% messages from c@hostc to b@hostb (tests/firewall_generative.rs). OTP's
%% own tags in random shapes, near-valid shapes of every kernel protocol
%% with wrong elements, forged pids of b's kernel processes, code in every
%% form b could run (erl_eval funs, MFAs, external funs that halt), and
%% laundering through every reply that echoes what the caller sent.
%% Anything that runs on b writes the marker file, or halts b.
%% Seeded: the same seed sends the same sequence of shapes.
-module(fw_gen).
-export([run/7]).

%% Third: pids of a third node's kernel processes (hosta's), which b must
%% never be made to answer or act on.
run(Seed, N, B, Given, Forged, Third, Marker) ->
    _ = rand:seed(exsss, Seed),
    Ctx = #{b => B, given => Given, forged => Forged, marker => Marker,
            learnt => [], funs => funs(Marker), third => Third},
    loop(N, Ctx, #{}).

loop(0, Ctx, Kinds) ->
    flush(Ctx),
    {sent, maps:to_list(Kinds), learnt, length(maps:get(learnt, Ctx))};
loop(N, Ctx, Kinds) ->
    Kind = pick([send, send, send, shaped, shaped, shaped, launder, call, signal]),
    Ctx1 = try step(Kind, Ctx) of
               #{} = C -> C;
               _ -> Ctx
           catch _:_ -> Ctx
           end,
    loop(N - 1, learn(Ctx1), maps:update_with(Kind, fun(X) -> X + 1 end, 1, Kinds)).

%% Code b would run if anything let it through.
funs(Marker) ->
    Src = ["fun() -> file:write_file(\"~s\", <<>>) end.",
           "fun(_) -> file:write_file(\"~s\", <<>>) end.",
           "fun(_, _) -> file:write_file(\"~s\", <<>>) end.",
           "fun(_, _, _) -> file:write_file(\"~s\", <<>>) end."],
    [begin
         {ok, T, _} = erl_scan:string(lists:flatten(io_lib:format(S, [Marker]))),
         {ok, [E]} = erl_parse:parse_exprs(T),
         {value, F, _} = erl_eval:expr(E, []),
         F
     end || S <- Src] ++ [fun erlang:halt/0, fun erlang:halt/1, fun init:stop/0].

pick(L) -> lists:nth(rand:uniform(length(L)), L).

%% A list of one to three of what G makes.
lst(G) -> [G() || _ <- lists:seq(1, rand:uniform(3))].

targets(#{b := B} = C) ->
    [{N, B} || N <- [net_kernel, global_name_server, rex, pg, cache, init,
                     file_server_2, code_server, user, application_controller,
                     logger, erl_prim_loader, kernel_sup, global_group, inet_db]]
        ++ pids(C).

pids(C) -> maps:get(given, C) ++ maps:get(forged, C) ++ maps:get(learnt, C).

tags() ->
    ['$gen_call', '$gen_cast', is_auth, spawn, spawn_link, registered_send,
     badcookie, disconnect, init_connect, init_connect_ack, lock_set, exchange,
     exchange_ops, resolved, new_nodes, in_sync, async_del_name,
     async_del_lock, set_lock, del_lock, register, register_ext, unregister,
     cancel_connect, lost_connection, remove_connection, registrar, stop,
     nodeup, nodedown, 'DOWN', 'EXIT', discover, sync, join, leave,
     features_request, features_reply, call, cast, block_call, system,
     io_request, io_reply, put_chars, get_line, get_until, setopts,
     expand_fun, data, eof, code_call, load_binary, start_child,
     terminate_child, write_file, apply, eval, locker, alias, trap_exit].

%% A random term, `D` levels deep at most.
term(C, 0) -> leaf(C);
term(C, D) ->
    case rand:uniform(7) of
        1 -> leaf(C);
        2 -> list_to_tuple([pick(tags()) | [term(C, D - 1) || _ <- lists:seq(1, rand:uniform(5) - 1)]]);
        3 -> [term(C, D - 1) || _ <- lists:seq(1, rand:uniform(4) - 1)];
        4 -> {'$gen_call', from(C), term(C, D - 1)};
        5 -> {'$gen_cast', term(C, D - 1)};
        6 -> #{term(C, 0) => term(C, D - 1)};
        7 -> list_to_tuple([term(C, D - 1) || _ <- lists:seq(1, rand:uniform(4))])
    end.

leaf(#{b := B, marker := M} = C) ->
    case rand:uniform(14) of
        1 -> pick(tags());
        2 -> rand:uniform(1 bsl 40) - 3;
        3 -> self();
        4 -> make_ref();
        5 -> pick([node(), B, nonode@nohost]);
        6 -> pick(pids(C));
        7 -> pick(maps:get(funs, C));
        8 -> {file, write_file, [M, <<>>]};
        9 -> pick([<<"halt().\n">>, "halt().\n", <<>>, []]);
        10 -> [alias | make_ref()];
        11 -> {pick(pids(C)), make_ref()};
        12 -> pick([true, false, undefined, infinity, normal, kill]);
        13 -> hd(erlang:ports());
        14 -> 3.5
    end.

%% A `From` of every form OTP uses, and wrong ones.
from(C) ->
    case rand:uniform(9) of
        1 -> {self(), make_ref()};
        2 -> {self(), [alias | make_ref()]};
        3 -> {self(), [[alias | make_ref()] | make_ref()]};
        4 -> {self(), {make_ref(), node()}};
        5 -> {pick(pids(C)), make_ref()};
        6 -> {self(), pick(pids(C))};
        7 -> {self(), pick(maps:get(forged, C))};
        8 -> leaf(C);
        9 -> {self(), make_ref(), extra}
    end.

%% The shapes of each kernel protocol, with holes filled at random.
shaped(#{b := B, marker := M} = C) ->
    T = fun() -> term(C, 1) end,
    F = fun() -> pick(maps:get(funs, C)) end,
    P = fun() -> pick([self(), pick(pids(C)), T()]) end,
    Third = fun() -> pick(maps:get(third, C)) end,
    Scope = fun() -> pick([self(), whereis(pg), P()]) end,
    Op = fun() -> pick([{insert, {n, P(), F()}}, {insert, T()}, {delete, T()}, T()]) end,
    Ext = fun() -> pick([{n, P(), node()}, T()]) end,
    Known = fun() -> pick([node(), {node(), 8}, T(), {T(), T()}]) end,
    Shapes =
        [{net_kernel, {'$gen_call', from(C), {is_auth, pick([node(), T()])}}},
         {net_kernel, {'$gen_call', from(C), {spawn, file, write_file, [M, <<>>], group_leader()}}},
         {net_kernel, {'$gen_call', from(C), {spawn_link, file, write_file, [M, <<>>], group_leader()}}},
         {net_kernel, {P(), registered_send, pick([init, file_server_2, code_server]), pick([{stop, stop}, T()])}},
         {net_kernel, {'$gen_call', from(C), {disconnect, B}}},
         {net_kernel, {'$gen_cast', {badcookie, T()}}},
         {global_name_server, {registrar, F()}},
         {global_name_server, {'$gen_call', from(C), {registrar, F()}}},
         {global_name_server, {'$gen_cast', {init_connect, pick([{8, T()}, 8, T()]), node(), {locker, T(), T(), P()}}}},
         {global_name_server, {'$gen_cast', {lock_set, P(), T(), T()}}},
         {global_name_server, {'$gen_cast', {exchange, node(), [{n, P(), F()}], [], T()}}},
         {global_name_server, {'$gen_cast', {exchange_ops, node(), T(), [{insert, {n, P(), F()}}], [T()]}}},
         {global_name_server, {'$gen_cast', {resolved, node(), [{n, P(), F()}], [], [], T(), []}}},
         {global_name_server, {'$gen_cast', {new_nodes, node(), [], [{n, P(), F()}], [], []}}},
         {global_name_server, {'$gen_cast', {in_sync, node(), pick([true, T()])}}},
         {global_name_server, {'$gen_cast', {async_del_name, T(), P()}}},
         {global_name_server, {'$gen_call', from(C), {register, n, P(), F()}}},
         {global_name_server, {'$gen_call', from(C), {set_lock, {T(), T()}}}},
         {global_name_server, {nodeup, B, T()}},
         {global_name_server, {nodedown, node(), T()}},
         {global_name_server, {'DOWN', make_ref(), process, P(), kill}},
         {global_name_server, {'EXIT', P(), kill}},
         {global_name_server, {lost_connection, node(), T(), T(), T()}},
         {global_name_server, {init_connect_ack, node(), T(), T()}},
         {global_name_server, stop},
         %% Inside the lists of global's sync, and whom they name.
         {global_name_server, {'$gen_cast', {new_nodes, pick([node(), B, T()]), lst(Op), lst(Ext), lst(Known),
                                             pick([[], lst(T), [{vsn, 8}, {lock, pick([{global, [self()]}, T()])}]])}}},
         {global_name_server, {'$gen_cast', {resolved, pick([node(), T()]), lst(Op), lst(Known), unused, lst(Ext), T()}}},
         {global_name_server, {'$gen_cast', {exchange, pick([node(), T()]), [{n, pick([P(), Third()]), F()}], [], T()}}},
         {global_name_server, {'$gen_cast', {init_connect, {rand:uniform(10) - 1, T()}, pick([node(), B, T()]), {locker, T(), [], P()}}}},
         {global_name_server, {'$gen_call', from(C), {register, n, pick([P(), Third()]), pick([fun global:random_exit_name/3, fun global:notify_all_name/3])}}},
         {pg, {leave, self(), pick([self(), [self()]]), lst(T)}},
         {rex, {Third(), features_request}},
         {net_kernel, {'$gen_call', {Third(), make_ref()}, {is_auth, node()}}},
         {pg, {discover, P()}},
         %% OTP 29's pg (version 1): to OTP 25 or 27, or with lists that
         %% ++ and -- fail on, or naming b's or a third node's members.
         {pg, {discover, Scope(), pick([1, 0, 2, T()])}},
         {pg, {'$gen_cast', {local_data, Scope(), pick([1, T()]),
                             pick([#{grp => [P()]}, #{grp => P()}, #{T() => [P(), Third()]}, T()])}}},
         {pg, {update, Scope(), pick([[{grp, pick([[P()], [], T(), [Third()]]), pick([[P()], [], T(), [Third()]])}],
                                      lst(T)])}},
         {pg, {'$gen_cast', {sync, P(), [{grp, [P()]}, T()]}}},
         {pg, {join, P(), grp, pick([P(), [P()], T()])}},
         {pg, {leave, P(), pick([P(), [P()]]), pick([[grp], T()])}},
         {pg, T()},
         {rex, {P(), features_request}},
         {rex, {features_reply, node(), pick([[erpc], T()])}},
         {rex, {from(C), {call, file, write_file, [M, <<>>], group_leader()}}},
         {rex, {'$gen_call', from(C), {call, file, write_file, [M, <<>>], group_leader()}}},
         {rex, {'$gen_cast', {cast, file, write_file, [M, <<>>], group_leader()}}},
         {gl, {io_request, self(), make_ref(), pick([
               {put_chars, unicode, file, write_file, [M, <<>>]},
               {put_chars, unicode, io_lib, format, ["~p", [F()]]},
               {get_line, unicode, ''},
               {get_until, unicode, '', file, write_file, [M, <<>>]},
               {setopts, [{expand_fun, F()}]},
               {requests, [{put_chars, unicode, "x"}, {setopts, [{expand_fun, F()}]}]},
               T()])}},
         {gl, {hd(erlang:ports()), {data, "halt().\n"}}},
         {gl, {P(), {data, "halt().\n"}}},
         {gl, {P(), eof}},
         {any, {system, from(C), pick([{replace_state, F()}, {change_code, m, v, x}, suspend, get_state])}},
         {any, {'EXIT', P(), kill}},
         {any, {'$gen_call', from(C), pick([{write_file, M, <<>>}, {start_child, {x, {file, write_file, [M, <<>>]}, temporary, 1, worker, []}}, {stop_application, kernel}])}},
         {any, {'$gen_cast', {try_again_restart, x}}},
         {any, {code_call, self(), {load_binary, m, "m.erl", <<>>}}},
         {any, {stop, stop}}],
    {To0, Msg} = pick(Shapes),
    To = case To0 of
             gl -> pick(maps:get(given, C) ++ maps:get(forged, C));
             any -> pick(targets(C));
             Name -> pick([{Name, B} | maps:get(forged, C)])
         end,
    send_to(To, Msg).

send_to(To, Msg) ->
    case rand:uniform(8) of
        1 -> catch erlang:send(To, Msg, [priority]);
        2 -> catch erlang:send(To, Msg, [noconnect]);
        _ -> catch erlang:send(To, Msg)
    end.

step(send, C) -> send_to(pick(targets(C)), term(C, 3)), C;
step(shaped, C) -> shaped(C), C;
step(call, C) ->
    catch gen_server:call(pick(targets(C)), term(C, 2), 50),
    C;
step(signal, #{b := B, marker := M} = C) ->
    P = pick(pids(C)),
    case rand:uniform(7) of
        1 -> catch exit(P, pick([kill, normal, shutdown, term(C, 1)]));
        2 -> catch erlang:monitor(process, pick(targets(C)));
        3 -> catch spawn(B, file, write_file, [M, <<>>]);
        4 -> catch spawn(B, pick(maps:get(funs, C)));
        5 -> spawn(fun() -> catch link(P), receive after 100 -> exit(kill) end end);
        6 -> catch erpc:cast(B, file, write_file, [M, <<>>]);
        7 -> catch group_leader(self(), P)
    end,
    C;
%% Laundering: have b echo forged pids back (is_auth's tag, the cache's
%% store, a call's tag), then use what came back.
step(launder, #{b := B, marker := M} = C) ->
    Fs = maps:get(forged, C),
    case rand:uniform(4) of
        1 -> {net_kernel, B} ! {'$gen_call', {self(), pick([pick(Fs), Fs])}, {is_auth, node()}};
        2 -> catch gen_server:call({cache, B}, {put, laundered, pick([pick(Fs), Fs, {x, pick(Fs)}])}, 200),
             catch gen_server:call({cache, B}, {get, laundered}, 200);
        3 -> catch gen_server:call(pick(targets(C)), {echo, pick(Fs)}, 50);
        4 -> ok
    end,
    C1 = learn(C),
    case maps:get(learnt, C1) of
        [] -> C1;
        L ->
            P = pick(L),
            send_to(P, pick([{'$gen_call', {self(), make_ref()}, {write_file, M, <<>>}},
                             {stop, stop},
                             {io_request, self(), make_ref(), {put_chars, unicode, file, write_file, [M, <<>>]}},
                             {system, {self(), make_ref()}, {replace_state, pick(maps:get(funs, C))}}])),
            C1
    end.

%% Pids of b found in whatever came back (replies, echoes), remembered.
learn(#{b := B} = C) ->
    receive
        Msg ->
            New = [P || P <- pids_in(Msg), node(P) =:= B],
            L = lists:sublist(lists:usort(New ++ maps:get(learnt, C)), 64),
            learn(C#{learnt := L})
    after 0 -> C
    end.

flush(C) -> _ = learn(C), ok.

pids_in(T) when is_pid(T) -> [T];
pids_in(T) when is_tuple(T) -> pids_in(tuple_to_list(T));
pids_in([H | R]) -> pids_in(H) ++ pids_in(R);
pids_in(M) when is_map(M) -> pids_in(maps:to_list(M));
pids_in(_) -> [].
